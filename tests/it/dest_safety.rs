//! DEST and the running cluster (issue 10, items 1 and 3): pgbb refuses — exit 5, nothing
//! created or removed — a DEST (or `-T` target) that is, contains or lies inside the server's
//! data directory or a tablespace, however the path reaches it (symlink, bind mount), and a
//! DEST holding the postmaster.pid of a live server. Run as root and as `postgres`, who owns
//! the cluster's files and could remove them.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::*;

/// Who runs pgbb: root (when the tests run as root) and the cluster's owner.
fn runners() -> Vec<bool> {
    if is_root() {
        vec![false, true]
    } else {
        vec![false]
    }
}

/// pgbb with `args`, as `postgres` when `as_postgres` (tests run as root), else as we are.
fn pgbb_as(as_postgres: bool, args: &[OsString]) -> Output {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", pgbb_bin()]);
        c
    } else {
        pgbb()
    };
    cmd.env_remove("PGPASSWORD").args(args).output().unwrap()
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// Every path below `dir` (symlinks not followed).
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.insert(p);
        }
    }
    out
}

/// A cluster with a table, and a snapshot of its data directory.
fn cluster_with_data() -> (Cluster, BTreeSet<PathBuf>) {
    let c = Cluster::new();
    c.client().batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g; CHECKPOINT").unwrap();
    let before = tree(&c.data);
    (c, before)
}

/// The run was refused with exit 5 and `why`; the cluster still answers and lost nothing.
fn assert_refused_and_intact(c: &Cluster, out: &Output, before: &BTreeSet<PathBuf>, why: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(5), "expected exit 5: {err}");
    assert!(err.contains(why), "the message should say {why:?}: {err}");
    assert_eq!(err.matches("pgbb: error:").count(), 1, "one error: {err}");
    let after = tree(&c.data);
    let lost: Vec<_> = before.difference(&after).collect();
    assert!(lost.is_empty(), "files of the live cluster were removed: {lost:?}");
    assert_eq!(query_i64(&mut c.client(), "SELECT count(*) FROM t"), 1000);
    c.assert_no_pgbb_left();
}

#[test]
fn force_at_the_live_data_directory_its_parent_or_a_symlink_to_either_is_refused() {
    let (c, before) = cluster_with_data();
    let parent = c.data.parent().unwrap().to_path_buf();
    let link_data = c.path("link-to-data");
    let link_parent = c.path("link-to-parent");
    std::os::unix::fs::symlink(&c.data, &link_data).unwrap();
    std::os::unix::fs::symlink(&parent, &link_parent).unwrap();
    for as_postgres in runners() {
        for (dest, why) in [
            (c.data.clone(), "is the server's data directory"),
            (parent.clone(), "contains the server's data directory"),
            (link_data.clone(), "is the server's data directory"),
            (link_parent.clone(), "contains the server's data directory"),
        ] {
            let out = pgbb_as(as_postgres, &os(&[&"-f", &"-c", &"fast", &c.dsn(), &dest]));
            assert_refused_and_intact(&c, &out, &before, why);
        }
    }
}

#[test]
fn dest_inside_the_data_directory_is_refused_up_front() {
    let (c, before) = cluster_with_data();
    let link = c.path("link-to-data");
    std::os::unix::fs::symlink(&c.data, &link).unwrap();
    for as_postgres in runners() {
        for dest in [c.data.join("mybackup"), c.data.join("base/deeper/backup"), link.join("mybackup")] {
            let out = pgbb_as(as_postgres, &os(&[&"-c", &"fast", &c.dsn(), &dest]));
            assert_refused_and_intact(&c, &out, &before, "inside the server's data directory");
            assert!(!c.data.join("mybackup").exists() && !c.data.join("base/deeper").exists(), "DEST was created");
        }
    }
}

#[test]
fn force_at_a_tablespace_location_or_a_target_inside_a_protected_directory_is_refused() {
    let (c, _) = cluster_with_data();
    let loc = tablespace_one(&c);
    let mut cl = c.client();
    cl.batch_execute("CREATE TABLE ts_t TABLESPACE one AS SELECT 1 AS x; CHECKPOINT").unwrap();
    let before = tree(&c.data);
    let before_ts = tree(&loc);
    let elsewhere = c.path("ts-copy");
    let map_away = format!("-T{}={}", loc.display(), elsewhere.display());
    let map_into_data = format!("-T{}={}", loc.display(), c.data.join("ts-copy").display());
    let map_into_ts = format!("-T{}={}", loc.display(), loc.join("copy").display());
    for as_postgres in runners() {
        let dest = c.path("backup");
        let cases: [(Vec<OsString>, &str); 4] = [
            (os(&[&"-f", &map_away, &c.dsn(), &loc]), "is the server's tablespace"),
            // Unmapped, the target is the location itself: refused before anything else.
            (os(&[&"-f", &c.dsn(), &loc]), "which exists and is not empty"),
            (os(&[&map_into_data, &c.dsn(), &dest]), "inside the server's data directory"),
            (os(&[&map_into_ts, &c.dsn(), &dest]), "inside the server's tablespace"),
        ];
        for (args, why) in cases {
            let out = pgbb_as(as_postgres, &args);
            assert_refused_and_intact(&c, &out, &before, why);
            assert_eq!(tree(&loc), before_ts, "the tablespace changed");
            assert_eq!(query_i64(&mut c.client(), "SELECT count(*) FROM ts_t"), 1);
            assert!(!dest.exists() && !elsewhere.exists(), "a refused run created {}", dest.display());
        }
    }
}

/// Runs `script` (sh) in a private mount namespace (root only).
fn in_mount_namespace(script: &str) -> Output {
    Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", script]).output().unwrap()
}

#[test]
fn force_through_a_bind_mount_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED force_through_a_bind_mount_is_refused: bind mounts need root");
        return;
    }
    let (c, before) = cluster_with_data();
    let parent = c.data.parent().unwrap();
    let alt = tempfile::tempdir().unwrap();
    let (p, a, d, bin) = (parent.display(), alt.path().display(), c.dsn(), pgbb_bin());
    // The same directories under another path: only device and inode tell them apart.
    let out = in_mount_namespace(&format!("mount --bind '{p}' '{a}' && exec '{bin}' -f '{d}' '{a}'"));
    assert_refused_and_intact(&c, &out, &before, "contains the server's data directory");
    let out = in_mount_namespace(&format!("mount --bind '{p}' '{a}' && exec '{bin}' -f '{d}' '{a}/data'"));
    assert_refused_and_intact(&c, &out, &before, "is the server's data directory");
}

#[test]
fn a_dest_holding_the_live_postmaster_pid_is_refused_when_paths_cannot_tell() {
    if !is_root() {
        eprintln!("SKIPPED a_dest_holding_the_live_postmaster_pid_is_refused: mounts need root");
        return;
    }
    let (c, before) = cluster_with_data();
    let alt = tempfile::tempdir().unwrap();
    let (data, a, d, bin) = (c.data.display(), alt.path().display(), c.dsn(), pgbb_bin());
    // As a client on another host sees a shared mount: the data directory under another path,
    // and nothing at the server's own path.
    let hide = format!("mount --bind '{data}' '{a}' && mount -t tmpfs none '{data}'");
    for force in ["-f", "-v"] {
        let out = in_mount_namespace(&format!("{hide} && exec '{bin}' {force} '{d}' '{a}'"));
        assert_refused_and_intact(&c, &out, &before, "postmaster.pid");
    }
    let out = in_mount_namespace(&format!("{hide} && exec '{bin}' '{d}' '{a}/mybackup'"));
    assert_refused_and_intact(&c, &out, &before, "postmaster.pid");
    assert!(!c.data.join("mybackup").exists());
}
