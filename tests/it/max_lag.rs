//! `--max-lag`: the copy is held while a standby lags more than the limit (a paused replay
//! holds it back), resumes when it catches up, and says so in the log and in `-P`; a server
//! without standbys, a role that cannot see the lag, and bad values.

use std::io::Read;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::*;

/// A streaming standby of `c` made by `pgbb -R`, named `name` in pg_stat_replication, and
/// streaming once this returns.
fn standby_of(c: &Cluster, name: &str) -> Cluster {
    let dest = c.path(name);
    let dsn = format!("{} application_name={name}", c.dsn());
    let out = pgbb_run(&["-R", "-c", "fast", &dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = start_copy(&dest);
    let mut cl = c.client();
    wait_until(&format!("{name} streaming"), Duration::from_secs(60), || {
        query_i64(
            &mut cl,
            &format!(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{name}' AND state = 'streaming'"
            ),
        ) == 1
    });
    s
}

/// Pauses replay on `standby`, then writes WAL on `primary` until `watcher` (where the
/// standby streams from) sees it lag more than `bytes` behind.
fn hold_back(primary: &Cluster, standby: &Cluster, watcher: &Cluster, name: &str, bytes: i64) {
    standby.client().batch_execute("SELECT pg_wal_replay_pause()").unwrap();
    let mut p = primary.client();
    p.batch_execute("CREATE TABLE IF NOT EXISTS filler (x text)").unwrap();
    let lag_sql = format!(
        "SELECT coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                ELSE pg_current_wal_lsn() END, replay_lsn), 0)::bigint \
           FROM pg_stat_replication WHERE application_name = '{name}'"
    );
    let mut w = watcher.client();
    wait_until(&format!("{name} to lag more than {bytes} bytes"), Duration::from_secs(120), || {
        if query_i64(&mut w, &lag_sql) > bytes {
            return true;
        }
        p.batch_execute("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)").unwrap();
        false
    });
}

/// Collects a child's stderr as it comes.
fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().unwrap();
    let t = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            t.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Data files the backup into `dest` has written under base/<db>/.
fn data_files(dest: &Path) -> usize {
    std::fs::read_dir(dest.join("base"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|db| std::fs::read_dir(db.path()).into_iter().flatten().count())
        .sum()
}

/// Starts `pgbb --max-lag` against `source` while `name` is held back, checks that no data
/// file is copied through two progress lines that say so, resumes replay on `standby`, and
/// checks that the backup completes and logged both ends. Returns the log.
fn held_then_resumed(source: &Cluster, standby: &Cluster, name: &str, dest: &Path, extra: &[&str]) -> String {
    let mut args = vec!["-P", "-v", "-c", "fast", "-j", "2", "--compress", "none"];
    args.extend(extra);
    let mut child = spawn_pgbb(&args, &source.dsn(), dest);
    let log = collect_stderr(&mut child);
    let held_line = format!("held: standby {name} lags ");
    let seen = || log.lock().unwrap().clone();
    wait_until("the copy to be held", Duration::from_secs(60), || {
        seen().contains(&format!("standby {name} lags")) && seen().contains("the copy is held")
    });
    // Progress lines come every 5 s: two that say "held" span at least that long.
    wait_until("two progress lines of a held copy", Duration::from_secs(30), || {
        assert_eq!(data_files(dest), 0, "a data file was copied while {name} lagged:\n{}", seen());
        assert!(child.try_wait().unwrap().is_none(), "pgbb ended while {name} lagged:\n{}", seen());
        seen().lines().filter(|l| l.starts_with("pgbb: progress:") && l.contains(&held_line)).count() >= 2
    });
    standby.client().batch_execute("SELECT pg_wal_replay_resume()").unwrap();
    let (status, _) = wait_exit(&mut child, Duration::from_secs(180));
    let text = seen();
    assert!(status.success(), "{status}:\n{text}");
    assert!(text.contains("the copy resumes after"), "{text}");
    assert!(text.contains("--max-lag: the copy was held"), "{text}");
    assert!(data_files(dest) > 0);
    text
}

#[test]
fn max_lag_holds_the_copy_while_a_standby_lags_and_resumes_when_it_catches_up() {
    let c = Cluster::new();
    c.pgbench_init(2);
    let s = standby_of(&c, "lagger");
    hold_back(&c, &s, &c, "lagger", 8 << 20);
    let dest = c.path("held");
    // With -r too: while the standby lags the copy is held whatever the rate allows.
    let log = held_then_resumed(&c, &s, "lagger", &dest, &["--max-lag", "4MB", "-r", "64M"]);
    assert!(log.contains("watching the standbys (lagger)"), "{log}");
    assert!(log.contains("WARNING: standby lagger lags "), "{log}");
    assert!(log.contains("the copy is held until it is under 3.2 MB"), "{log}");
    verify_restore(
        &dest,
        &Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] },
    );
}

/// A held backup still follows signals: Ctrl-C aborts it at once, leaving nothing.
#[test]
fn max_lag_a_held_backup_stops_on_ctrl_c() {
    let c = Cluster::new();
    c.pgbench_init(1);
    let s = standby_of(&c, "stuck");
    hold_back(&c, &s, &c, "stuck", 8 << 20);
    let dest = c.path("interrupted");
    let mut child = spawn_pgbb(&["--max-lag", "4MB", "-c", "fast"], &c.dsn(), &dest);
    let log = collect_stderr(&mut child);
    wait_until("the copy to be held", Duration::from_secs(60), || log.lock().unwrap().contains("the copy is held"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let (status, took) = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{}", log.lock().unwrap());
    assert!(took < Duration::from_secs(5), "took {took:?} to stop a held backup");
    assert!(!dest.exists(), "DEST left behind");
    assert_no_pgbb_process(dest.to_str().unwrap());
    c.assert_no_pgbb_left();
}

/// Backing up a standby: its cascaded standbys are the ones watched.
#[test]
fn max_lag_on_a_standby_watches_its_cascaded_standbys() {
    let c = Cluster::new();
    c.pgbench_init(1);
    let s1 = standby_of(&c, "middle");
    let s2 = standby_of(&s1, "leaf");
    hold_back(&c, &s2, &s1, "leaf", 8 << 20);
    let dest = c.path("from-standby");
    let log = held_then_resumed(&s1, &s2, "leaf", &dest, &["--max-lag", "4MB"]);
    assert!(log.contains("this standby's cascaded standbys (leaf)"), "{log}");
    verifybackup(&dest, &[]);
}

/// A duration reads replay_lag, which grows while replay is paused and WAL keeps coming.
#[test]
fn max_lag_as_a_duration_reads_replay_lag() {
    let c = Cluster::new();
    c.pgbench_init(1);
    let s = standby_of(&c, "slow");
    hold_back(&c, &s, &c, "slow", 1 << 20);
    let mut p = c.client();
    wait_until("replay_lag over 3 s", Duration::from_secs(60), || {
        p.batch_execute("INSERT INTO filler VALUES ('x')").unwrap();
        query_i64(
            &mut p,
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'slow' AND replay_lag > '3s'",
        ) == 1
    });
    let dest = c.path("by-time");
    let log = held_then_resumed(&c, &s, "slow", &dest, &["--max-lag", "2s"]);
    assert!(log.contains("(--max-lag 2.0 s): the copy is held until it is under 1.6 s"), "{log}");
    verifybackup(&dest, &[]);
}

/// No standby: a warning, and the backup runs as without --max-lag, -r still limiting it
/// (the lower of the two limits wins, and here only -r limits).
#[test]
fn max_lag_without_standbys_warns_and_max_rate_still_applies() {
    let c = Cluster::new();
    c.pgbench_init(1);
    let size = query_i64(
        &mut c.client(),
        "SELECT sum(pg_relation_size(oid))::bigint FROM pg_class WHERE relkind IN ('r','i','t','m')",
    );
    let dest = c.path("alone");
    let t = std::time::Instant::now();
    let out = pgbb_run(&[
        "--max-lag",
        "1MB",
        "-r",
        "4M",
        "--compress",
        "none",
        "-c",
        "fast",
        &c.dsn(),
        dest.to_str().unwrap(),
    ]);
    let took = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WARNING: --max-lag 1.0 MB: no standby replicates from this server now"),
        "{}",
        stderr(&out)
    );
    let floor = size as f64 / (4u64 << 20) as f64;
    assert!(took >= 0.8 * floor, "{size} bytes at 4 MB/s should take at least {floor:.1} s, took {took:.1} s");
    verifybackup(&dest, &[]);
}

#[test]
fn max_lag_bad_values_are_usage_errors() {
    let c = Cluster::new();
    for (bad, says) in [
        ("16", "needs a unit: bytes (e.g. 16MB) or a duration (e.g. 16s)"),
        ("5m", "is ambiguous: write 5MB (bytes) or 5min (minutes)"),
        ("10 parsecs", "invalid --max-lag unit \"parsecs\""),
        ("0s", "out of range"),
        ("fast", "invalid --max-lag \"fast\""),
    ] {
        let dest = c.path("never");
        let out = pgbb_run(&["--max-lag", bad, &c.dsn(), dest.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{bad}: {}", stderr(&out));
        assert!(!dest.exists(), "{bad}: DEST was made");
    }
    let out = pgbb_run(&["--max-lag", "1s", "--check", &c.dsn()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// A role without pg_monitor sees NULL positions in pg_stat_replication: the backup stops
/// before it starts, naming the GRANT (exit 4); with the grant it runs.
#[test]
fn max_lag_needs_pg_monitor_and_says_so() {
    let c = Cluster::new();
    c.client()
        .batch_execute(
            "CREATE ROLE backup LOGIN REPLICATION;
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean),
                                       pg_catalog.pg_stat_file(text, boolean),
                                       pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean),
                                       pg_catalog.pg_backup_start(text, boolean),
                                       pg_catalog.pg_backup_stop(boolean) TO backup;",
        )
        .unwrap();
    let dsn = c.dsn().replace("user=postgres", "user=backup");
    let dest = c.path("nomonitor");
    let out = pgbb_run(&["--max-lag", "16MB", "-c", "fast", &dsn, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("GRANT pg_monitor TO \"backup\";"), "{}", stderr(&out));
    assert!(!dest.exists(), "DEST was made");
    c.assert_no_pgbb_left();
    c.client().batch_execute("GRANT pg_monitor TO backup").unwrap();
    let out = pgbb_run(&["--max-lag", "16MB", "-c", "fast", &dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}
