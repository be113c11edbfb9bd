//! Tablespaces: copied to their -T mappings, linked from pg_tblspc, verified and restored.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

#[test]
fn two_tablespaces_mapped_elsewhere_restore() {
    let c = Cluster::new();
    let loc1 = c.path("ts one");
    let loc2 = c.path("ts =two");
    for l in [&loc1, &loc2] {
        std::fs::create_dir(l).unwrap();
        chown_pg(l);
    }
    let mut cl = c.client();
    cl.batch_execute(&format!("CREATE TABLESPACE one LOCATION '{}'", loc1.display())).unwrap();
    cl.batch_execute(&format!("CREATE TABLESPACE two LOCATION '{}'", loc2.display())).unwrap();
    cl.batch_execute(
        "CREATE TABLE t1 TABLESPACE one AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g; \
         CREATE INDEX ON t1 (v) TABLESPACE two; \
         CREATE TABLE t2 TABLESPACE two AS SELECT g AS id FROM generate_series(1, 5000) g; \
         CREATE UNLOGGED TABLE u1 TABLESPACE one AS SELECT 1 AS x",
    )
    .unwrap();
    let new1 = c.path("mapped one");
    let new2 = c.path("mapped =two");
    let dest = c.path("backup");
    let m1 = format!("{}={}", loc1.display(), new1.display());
    let m2 = format!(
        "{}={}",
        loc2.display().to_string().replace('=', "\\="),
        new2.display().to_string().replace('=', "\\=")
    );
    let out = pgbb_run(&["-c", "fast", "-T", &m1, "-T", &m2, &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dest.join("tablespace_map").exists(), "plain format: links, no map");
    let oids: Vec<u32> = cl
        .query("SELECT oid FROM pg_tablespace WHERE spcname IN ('one', 'two') ORDER BY spcname", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(std::fs::read_link(dest.join("pg_tblspc").join(oids[0].to_string())).unwrap(), new1);
    assert_eq!(std::fs::read_link(dest.join("pg_tblspc").join(oids[1].to_string())).unwrap(), new2);
    // The unlogged table's main fork stayed behind; its init fork came.
    let u1: String = cl.query_one("SELECT pg_relation_filepath('u1')", &[]).unwrap().get(0);
    assert!(!dest.join(&u1).exists() && dest.join(format!("{u1}_init")).exists());
    chown_pg(&new1);
    chown_pg(&new2);
    let copy = verify_restore(
        &dest,
        &Expect {
            pgbench: false,
            databases: vec!["postgres".into()],
            unlogged: vec![("postgres".into(), "u1".into())],
            absent: vec![],
        },
    );
    let mut cc = copy.client();
    assert_eq!(query_i64(&mut cc, "SELECT count(*) FROM t1"), 20000);
    assert_eq!(query_i64(&mut cc, "SELECT count(*) FROM t2"), 5000);
    let loc: String = cc
        .query_one("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'two'", &[])
        .unwrap()
        .get(0);
    assert_eq!(loc, new2.display().to_string());
}

/// A tablespace whose location is not UTF-8 (its directory moved by an administrator while
/// the server was down, the link re-pointed, as one does): mapped with `-T` in those bytes,
/// copied and restored. pgbb used to panic reading the location.
#[test]
fn a_tablespace_location_that_is_not_utf8_is_mapped_and_copied() {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut c = Cluster::new();
    let loc = c.path("ts-loc");
    std::fs::create_dir(&loc).unwrap();
    chown_pg(&loc);
    let mut cl = c.client();
    cl.batch_execute(&format!("CREATE TABLESPACE odd LOCATION '{}'", loc.display())).unwrap();
    cl.batch_execute("CREATE TABLE t TABLESPACE odd AS SELECT g FROM generate_series(1, 3000) g").unwrap();
    let oid: u32 = cl.query_one("SELECT oid FROM pg_tablespace WHERE spcname = 'odd'", &[]).unwrap().get(0);
    drop(cl);
    c.stop();
    let moved = c.path("").join(std::ffi::OsStr::from_bytes(b"ts-caf\xe9"));
    std::fs::rename(&loc, &moved).unwrap();
    let link = c.data.join("pg_tblspc").join(oid.to_string());
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&moved, &link).unwrap();
    c.start();
    let new = c.path("mapped");
    let mut mapping = moved.clone().into_os_string().into_vec();
    mapping.push(b'=');
    mapping.extend_from_slice(new.as_os_str().as_bytes());
    let dest = c.path("backup");
    let out = pgbb()
        .args(["-c", "fast", "-T"])
        .arg(std::ffi::OsString::from_vec(mapping))
        .arg(c.dsn())
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_link(dest.join("pg_tblspc").join(oid.to_string())).unwrap(), new);
    chown_pg(&new);
    let copy = verify_restore(
        &dest,
        &Expect { pgbench: false, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] },
    );
    assert_eq!(query_i64(&mut copy.client(), "SELECT count(*) FROM t"), 3000);
}

/// A cluster with a tablespace at `ts` holding a table large enough to interrupt its copy.
fn cluster_with_a_big_tablespace() -> (Cluster, std::path::PathBuf) {
    let c = Cluster::new();
    let loc = tablespace_one(&c);
    let mut cl = c.client();
    cl.batch_execute(
        "CREATE TABLE big TABLESPACE one AS SELECT g, md5(g::text) AS v FROM generate_series(1, 400000) g",
    )
    .unwrap();
    (c, loc)
}

/// Starts a slow `-T loc=new` backup and waits until it is copying into the tablespace target.
fn interrupted_mapped_backup(c: &Cluster, loc: &Path, new: &Path, dest: &Path, signals: usize) -> std::process::Output {
    let map = format!("{}={}", loc.display(), new.display());
    let mut child =
        spawn_pgbb(&["-j", "2", "-c", "fast", "--chunk-size", "8k", "--compress", "none", "-T", &map], &c.dsn(), dest);
    let deadline = Instant::now() + Duration::from_secs(60);
    let copying =
        || glob_files(new).iter().any(|p| p.components().count() > new.components().count() + 2 && p.is_file());
    while !copying() {
        assert!(Instant::now() < deadline, "the copy into {} never started", new.display());
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..signals {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    }
    wait_exit(&mut child, Duration::from_secs(10));
    child.wait_with_output().unwrap()
}

/// Every path below `dir` (symlinks not followed); empty if it does not exist.
fn glob_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}

#[test]
fn an_interrupted_mapped_backup_leaves_no_tablespace_debris() {
    let (c, loc) = cluster_with_a_big_tablespace();
    // NEW did not exist: gone after Ctrl-C (once, and twice), with every directory pgbb made.
    for (signals, name) in [(1, "a"), (2, "b")] {
        let new = c.path(&format!("new-{name}/deeper"));
        let dest = c.path(&format!("backup-{name}"));
        let out = interrupted_mapped_backup(&c, &loc, &new, &dest, signals);
        assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
        assert_no_pgbb_process(dest.to_str().unwrap());
        assert!(!dest.exists(), "DEST left behind");
        assert!(!c.path(&format!("new-{name}")).exists(), "tablespace target left behind: {:?}", glob_files(&new));
    }
    // NEW existed, empty: empty again.
    let new = c.path("new-c");
    std::fs::create_dir(&new).unwrap();
    let dest = c.path("backup-c");
    let out = interrupted_mapped_backup(&c, &loc, &new, &dest, 1);
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(new.is_dir() && glob_files(&new).is_empty(), "left in the target: {:?}", glob_files(&new));
    assert!(!dest.exists());
    c.assert_no_pgbb_left();
    // The same command now succeeds.
    let map = format!("{}={}", loc.display(), new.display());
    let out = pgbb_run(&["-c", "fast", "-T", &map, &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    verifybackup(&dest, &[]);
}
