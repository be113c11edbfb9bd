//! Full backups under concurrent pgbench writes, proven by starting the copy.

use std::time::Duration;

use crate::harness::*;

/// Seeds pgbench data, a second database, an unlogged table and planted junk; returns what
/// the restored copy must show.
fn seed(c: &Cluster) -> Expect {
    // Scale 12: pgbench_accounts is over 128 MiB, so with -j 4 it is copied in pieces.
    c.pgbench_init(12);
    let mut cl = c.client();
    cl.batch_execute("CREATE DATABASE second").unwrap();
    cl.batch_execute(
        "CREATE EXTENSION amcheck; \
         CREATE UNLOGGED TABLE u AS SELECT g FROM generate_series(1, 10000) g; \
         CREATE UNLOGGED TABLE u_idx (id int PRIMARY KEY); INSERT INTO u_idx SELECT generate_series(1, 1000);",
    )
    .unwrap();
    let mut c2 = c.client_db("second");
    c2.batch_execute(
        "CREATE TABLE t2 AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g; \
         CREATE INDEX ON t2 (v); CREATE UNLOGGED TABLE u2 AS SELECT 1 AS x;",
    )
    .unwrap();
    let oid: u32 = cl.query_one("SELECT oid FROM pg_database WHERE datname = 'postgres'", &[]).unwrap().get(0);
    let planted = plant_excluded(c, oid);
    Expect {
        pgbench: true,
        databases: vec!["postgres".into(), "second".into()],
        unlogged: vec![
            ("postgres".into(), "u".into()),
            ("postgres".into(), "u_idx".into()),
            ("second".into(), "u2".into()),
        ],
        absent: planted,
    }
}

fn history_rows(c: &Cluster) -> i64 {
    query_i64(&mut c.client(), "SELECT count(*) FROM pgbench_history")
}

fn backup_under_load(jobs: &str) {
    let c = Cluster::new();
    let expect = seed(&c);
    let dest = c.path("backup");
    let load = c.pgbench_load(2, 600);
    wait_until("pgbench to write", Duration::from_secs(60), || history_rows(&c) > 0);
    let before = history_rows(&c);
    let out = pgbb_run(&["-j", jobs, "-c", "fast", "-v", "--chunk-size", "64k", &c.dsn(), dest.to_str().unwrap()]);
    let after = history_rows(&c);
    assert!(out.status.success(), "pgbb failed: {}", stderr(&out));
    assert!(stdout(&out).contains("backup complete"), "{}", stdout(&out));
    println!("MATRIX backup ok");
    if jobs != "1" {
        assert!(stderr(&out).contains("large files go in"), "the big table should be split: {}", stderr(&out));
    }
    // pgbench goes on writing after the backup, and made no error (finish).
    wait_until("pgbench to go on writing", Duration::from_secs(60), || history_rows(&c) > after);
    load.finish();
    c.assert_no_pgbb_left();
    // The restore check includes pgbench's invariant: the sums of abalance, bbalance, tbalance
    // and history's delta agree.
    let copy = verify_restore(&dest, &expect);
    println!("MATRIX verify ok");
    println!("MATRIX restore ok");
    // The copy is the server as of the end of the backup: every transaction that committed
    // before it started, those that committed while it ran, none after it ended.
    let restored = history_rows(&copy);
    assert!(
        before < restored && restored <= after,
        "the copy has {restored} pgbench_history rows; the server had {before} when the backup started and {after} when it ended"
    );
    let mut cl = copy.client_db("second");
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM t2"), 50000);
}

#[test]
fn backup_j1_under_pgbench_restores() {
    backup_under_load("1");
}

#[test]
fn backup_j4_under_pgbench_restores() {
    backup_under_load("4");
}

#[test]
fn dest_in_the_way_is_refused_and_kept() {
    let c = Cluster::new();
    let dest = c.path("full");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("precious"), "keep me").unwrap();
    let out = pgbb_run(&[&c.dsn(), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(dest.join("precious")).unwrap(), "keep me");
    let file = c.path("afile");
    std::fs::write(&file, "x").unwrap();
    let out = pgbb_run(&[&c.dsn(), file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    // -f replaces it.
    let out = pgbb_run(&["-f", "-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dest.join("precious").exists());
    assert!(dest.join("global/pg_control").exists());
}
