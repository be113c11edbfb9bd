//! Symlinks and special files inside the data directory (issue 10, item 2): skipped with
//! core's warning, never read through, as pg_basebackup does — when pgbb sees the server's
//! data directory. Through SQL alone a link cannot be told from what it points to: a loop
//! is then a clear error naming the link.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use crate::harness::*;

const SECRET: &str = "TOP SECRET, outside the data directory";

/// Every regular file below `dir` whose contents hold `needle` (symlinks not followed).
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    regular_files(dir)
        .into_iter()
        .filter(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).contains(needle))
        .map(|p| p.display().to_string())
        .collect()
}

fn mkfifo(p: &Path) {
    run_ok(Command::new("mkfifo").arg(p));
}

#[test]
fn symlinks_and_special_files_in_the_data_directory_are_skipped_and_never_read() {
    let c = Cluster::with(ClusterOpts { conf: vec!["log_statement = 'all'".into()], ..Default::default() });
    let outside = c.path("outside");
    std::fs::create_dir_all(outside.join("tree/sub")).unwrap();
    std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
    std::fs::write(outside.join("tree/sub/file"), SECRET).unwrap();
    let db: u32 = c.client().query_one("SELECT oid FROM pg_database WHERE datname = 'postgres'", &[]).unwrap().get(0);
    let links = [
        ("base/pgbb_link_file", outside.join("secret.txt")),
        ("base/pgbb_link_dir", outside.join("tree")),
        ("base/pgbb_loop", ".".into()),
        (&*format!("base/{db}/pgbb_link_rel"), outside.join("secret.txt")),
        ("pgbb_link_top", outside.join("tree")),
    ];
    for (name, target) in &links {
        symlink(target, c.data.join(name)).unwrap();
    }
    let fifos = ["pgbb_fifo", "global/pgbb_fifo2"];
    for f in fifos {
        mkfifo(&c.data.join(f));
    }
    chown_pg(&c.data);
    let dest = c.path("backup");
    let out = pgbb_run(&["-c", "fast", "-d", &c.dsn(), dest.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "pgbb failed: {err}");
    for name in links.iter().map(|(n, _)| *n).chain(fifos) {
        assert!(err.contains(&format!("skipping special file \"./{name}\"")), "no warning for {name}: {err}");
        assert!(std::fs::symlink_metadata(dest.join(name)).is_err(), "{name} is in the backup");
        assert!(!c.log().contains(name), "the server was asked about {name}");
    }
    assert_eq!(files_containing(&dest, SECRET), Vec::<String>::new(), "outside content in the backup");
    let copy = verify_restore(
        &dest,
        &Expect { pgbench: false, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] },
    );
    drop(copy);
    c.assert_no_pgbb_left();
}

#[test]
fn a_symlink_loop_seen_only_through_sql_is_a_clear_error() {
    if !is_root() {
        eprintln!("SKIPPED a_symlink_loop_seen_only_through_sql_is_a_clear_error: runs pgbb as nobody");
        return;
    }
    let c = Cluster::new();
    symlink(".", c.data.join("base/pgbb_loop")).unwrap();
    // A user who cannot read the data directory sees what a client on another host sees.
    let parent = c.path("nobody");
    std::fs::create_dir(&parent).unwrap();
    run_ok(Command::new("chown").arg("nobody").arg(&parent));
    let dest = parent.join("backup");
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", pgbb_bin()])
        .args(["-c", "fast", &c.dsn()])
        .arg(&dest)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("base/pgbb_loop") && err.contains("remove"),
        "the message should name the link and the fix: {err}"
    );
    assert!(!err.contains("base/pgbb_loop/pgbb_loop/pgbb_loop/pgbb_loop"), "name the link, not the loop: {err}");
    assert!(!dest.exists());
    c.assert_no_pgbb_left();
}
