//! `--delta`: an older copy in DEST brought up to date, moving only what differs, proven by
//! starting the result under pgbench load; and what it refuses to touch.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

fn expect_pgbench() -> Expect {
    Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] }
}

fn history_rows(c: &Cluster) -> i64 {
    query_i64(&mut c.client(), "SELECT count(*) FROM pgbench_history")
}

/// Every entry below `dir` (not following links): its kind, size, mode, mtime and a hash of
/// its bytes; what "byte for byte untouched" compares.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let body = if m.is_file() {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(std::fs::read(e.path()).unwrap()))
            } else if m.is_dir() {
                stack.push(e.path());
                "dir".into()
            } else {
                format!("-> {}", std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default())
            };
            let key = e.path().strip_prefix(dir).unwrap().display().to_string();
            out.insert(
                key,
                format!("{} {:o} {} {body}", m.len(), m.mode(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
            );
        }
    }
    out
}

/// Makes `dir` and everything in it owned by the user running the tests again (starting a
/// copy gives it to postgres).
fn chown_back(dir: &Path) {
    let me = nix::unistd::getuid().as_raw();
    let mut stack = vec![dir.to_path_buf()];
    std::os::unix::fs::lchown(dir, Some(me), None).unwrap();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            std::os::unix::fs::lchown(e.path(), Some(me), None).unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

/// One pgbench-like transaction by hand: `delta` added to account `aid`, teller 1 and branch 1,
/// and a history row (pgbench's invariant holds).
fn pay(c: &Cluster, aid: i32, delta: i32) {
    c.client()
        .batch_execute(&format!(
            "UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = 1; \
             UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = 1; \
             UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}; \
             INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, {aid}, {delta}, now())"
        ))
        .unwrap();
}

/// The relation file of `table`, relative to the data directory.
fn relation_file(c: &Cluster, table: &str) -> String {
    c.client().query_one("SELECT pg_relation_filepath($1::text::regclass)", &[&table]).unwrap().get(0)
}

fn delta(c: &Cluster, dest: &Path) -> std::process::Output {
    delta_from(&c.dsn(), dest)
}

fn delta_from(dsn: &str, dest: &Path) -> std::process::Output {
    pgbb_run(&["--delta", "-v", "-P", "-c", "fast", dsn, dest.to_str().unwrap()])
}

/// The bytes the summary line says travelled and were compared.
fn refreshed(out: &std::process::Output) -> String {
    let text = stdout(out);
    let line = text.lines().find(|l| l.contains("backup complete")).unwrap_or_else(|| panic!("no summary: {text}"));
    line.split("(refreshed: ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("not refreshed: {line}"))
        .to_string()
}

/// A server behind a network namespace (`ns`, so that --delta compares by block hashes) with
/// pgbench_accounts of about 130 MB (compared in 8 MB pieces, copied in 64 MB ones), amcheck
/// and `more` SQL run; `None` without root (the test is skipped, and says so).
fn remote_pgbench(test: &str, ns: u8, more: &str) -> Option<(NetNs, Cluster, String)> {
    if !is_root() {
        eprintln!("SKIPPED {test}: network namespaces need root");
        return None;
    }
    let (ns, c, dsn) = remote_cluster(ns, None);
    c.pgbench_init(10);
    c.client().batch_execute(&format!("CREATE EXTENSION amcheck; {more}")).unwrap();
    Some((ns, c, dsn))
}

/// A full backup without compression into `dest`.
fn plain_backup(dsn: &str, dest: &Path) {
    let out = pgbb_run(&["-c", "fast", "--compress", "none", dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// An older backup brought up to date while pgbench writes, from a server over the network
/// (compared by block hashes): changed blocks, a dropped table (its files gone), a new one.
/// The result restores with pgbench's invariant and amcheck, and holds the transactions of
/// the refresh's window; what travelled is a fraction of what was compared.
#[test]
fn delta_refreshes_an_older_backup_under_load() {
    if !is_root() {
        eprintln!("SKIPPED delta_refreshes_an_older_backup_under_load: network namespaces need root");
        return;
    }
    let (_ns, c, dsn) = remote_cluster(90, None);
    c.pgbench_init(5);
    c.client()
        .batch_execute(
            "CREATE EXTENSION amcheck; CREATE TABLE dropme AS SELECT generate_series(1, 100000) AS x; \
             CREATE TABLE unchanged AS SELECT g, repeat('u', 500) AS pad FROM generate_series(1, 200000) g",
        )
        .unwrap();
    let dropped = relation_file(&c, "dropme");
    let dest = c.path("older");
    let out = pgbb_run(&["-c", "fast", &dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dest.join(&dropped).exists());
    let load = c.pgbench_load(2, 600);
    wait_until("pgbench to write", Duration::from_secs(60), || history_rows(&c) > 100);
    c.client().batch_execute("DROP TABLE dropme; CREATE TABLE newer AS SELECT generate_series(1, 777) AS y").unwrap();
    let before = history_rows(&c);
    let out = delta_from(&dsn, &dest);
    let after = history_rows(&c);
    assert!(out.status.success(), "{}", stderr(&out));
    load.finish();
    let r = refreshed(&out);
    assert!(stderr(&out).contains("--delta: refreshing the copy of this cluster"), "{}", stderr(&out));
    assert!(stderr(&out).contains("by block hashes (only differing blocks travel)"), "{}", stderr(&out));
    let mb = |what: &str| -> f64 {
        let field = r.split(", ").find(|f| f.ends_with(what)).unwrap_or_else(|| panic!("{what} in {r}"));
        let (n, unit) = field.split_once(' ').unwrap();
        let unit = unit.split(' ').next().unwrap();
        n.parse::<f64>().unwrap()
            * match unit {
                "kB" => 1e-3,
                "MB" => 1.0,
                "GB" => 1e3,
                _ => 1e-6,
            }
    };
    // pgbench may touch most pages of its tables while the refresh runs (on a slow machine);
    // the table nobody writes (about 110 MB) is compared and stays.
    let (compared, travelled) = (mb("compared"), mb("over the network"));
    assert!(travelled < compared / 2.0, "{travelled} MB travelled of {compared} MB compared: {r}");
    assert!(!dest.join(&dropped).exists(), "the dropped table's file is still in DEST");
    assert!(!dest.join("pgbb_origin").exists(), "the run's record is left in a complete backup");
    let copy = verify_restore(&dest, &expect_pgbench());
    let mut cl = copy.client();
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM newer"), 777);
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM pg_class WHERE relname = 'dropme'"), 0);
    let restored = history_rows(&copy);
    assert!(before < restored && restored <= after, "{before} < {restored} <= {after}: {r}");
    c.assert_no_pgbb_left();
}

/// With zlib or zstd (over the network, where the helper may be used) the differing blocks
/// travel compressed: the same refresh of the same copy moves fewer bytes than with
/// `--compress none`, and every result restores with pgbench's invariant, amcheck and
/// pg_verifybackup.
#[test]
fn delta_with_zlib_sends_the_differing_blocks_compressed() {
    let Some((_ns, c, dsn)) =
        remote_pgbench("delta_with_zlib_sends_the_differing_blocks_compressed", 96, "CREATE EXTENSION plpython3u")
    else {
        return;
    };
    let first = c.path("zlib-first");
    plain_backup(&dsn, &first);
    // Every page of pgbench_accounts changes, as pgbench's transactions would change them.
    c.client()
        .batch_execute(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0; \
             UPDATE pgbench_branches SET bbalance = bbalance + 20000 WHERE bid = 1; \
             UPDATE pgbench_tellers SET tbalance = tbalance + 20000 WHERE tid = 1; \
             INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 20000, now())",
        )
        .unwrap();
    let mut travelled = Vec::new();
    for compress in ["none", "zlib", "zstd"] {
        let dest = c.path(&format!("zlib-{compress}"));
        run_ok(std::process::Command::new("cp").arg("-a").arg(&first).arg(&dest));
        let out = pgbb_run(&["--delta", "-d", "-c", "fast", "--compress", compress, &dsn, dest.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let r = refreshed(&out);
        assert!(stderr(&out).contains(" pieces"), "pgbench_accounts was not compared in pieces: {}", stderr(&out));
        // The differing blocks came through the helper of that method (the statements, -d).
        for helper in ["zlib", "zstd"] {
            let call = format!("CROSS JOIN LATERAL pg_temp.pgbb_read_{helper}(");
            assert_eq!(stderr(&out).contains(&call), helper == compress, "{compress}: {call}");
        }
        let field = r.split(", ").find(|f| f.ends_with("over the network")).unwrap_or_else(|| panic!("{r}"));
        let (n, unit) = field.split_once(' ').unwrap();
        let scale = match unit.split(' ').next().unwrap() {
            "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            _ => 1.0,
        };
        travelled.push(n.parse::<f64>().unwrap() * scale);
        let copy = verify_restore(&dest, &expect_pgbench());
        let mut cl = copy.client();
        assert_eq!(query_i64(&mut cl, "SELECT sum(abalance) FROM pgbench_accounts"), 20000, "{r}");
    }
    // The changed blocks of pgbench_accounts (its rows compress well) dominate what travels.
    assert!(travelled[1] < travelled[0] * 0.6, "zlib {} B against plain {} B", travelled[1], travelled[0]);
    assert!(travelled[2] < travelled[0] * 0.6, "zstd {} B against plain {} B", travelled[2], travelled[0]);
    c.assert_no_pgbb_left();
}

/// A backup that was never started is refreshed by page headers (LSN and checksum, not
/// hashes), but only where the copy's page is whole: a page of the copy torn in its second
/// half, whose header still matches the server's, is fetched again. The result holds the
/// server's bytes there and restores.
#[test]
fn delta_by_page_header_fetches_a_torn_page_of_the_copy() {
    let Some((_ns, c, dsn)) = remote_pgbench("delta_by_page_header_fetches_a_torn_page_of_the_copy", 86, "") else {
        return;
    };
    let dest = c.path("torn");
    plain_backup(&dsn, &dest);
    let file = relation_file(&c, "pgbench_accounts");
    c.client().batch_execute("CHECKPOINT").unwrap();
    let block = |dir: &Path, n: u64| {
        let mut b = vec![0u8; 8192];
        std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(dir.join(&file)).unwrap(), &mut b, n * 8192)
            .unwrap();
        b
    };
    // Block 7 is not changed below: the copy's header matches the server's.
    let server = block(&c.data, 7);
    assert_eq!(block(&dest, 7), server, "the backup's copy of block 7");
    let torn = std::fs::OpenOptions::new().write(true).open(dest.join(&file)).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&torn, &[0u8; 4096], 7 * 8192 + 4096).unwrap();
    drop(torn);
    pay(&c, 900_000, 3);
    let out = pgbb_run(&["--delta", "-d", "-c", "fast", "--compress", "none", &dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("relation pages are compared by their header (LSN and checksum)"), "{err}");
    assert!(err.contains("that was never started"), "{err}");
    assert!(err.contains(&format!("\"{file}\" bytes 0..")) && err.contains(": compared by page header"), "{err}");
    assert_eq!(block(&dest, 7), server, "the torn page was kept: {}", refreshed(&out));
    // --delta-hash: the same copy, every block by SHA-256.
    let out = pgbb_run(&["--delta", "--delta-hash", "-d", "-c", "fast", &dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("pages are compared by their SHA-256 (--delta-hash)"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("compared by page header"), "{}", stderr(&out));
    let copy = verify_restore(&dest, &expect_pgbench());
    assert_eq!(query_i64(&mut copy.client(), "SELECT abalance::bigint FROM pgbench_accounts WHERE aid = 900000"), 3);
    c.assert_no_pgbb_left();
}

/// A large file of the copy with pieces that were never written (holes, as an interrupted
/// backup leaves them): those pieces are not hashed on either side, their blocks are fetched
/// (plain, then with zlib: read through the helper at once, with no comparison pass), and the
/// result restores.
#[test]
fn holes_in_a_large_copy_are_fetched_without_hashing() {
    let Some((_ns, c, dsn)) =
        remote_pgbench("holes_in_a_large_copy_are_fetched_without_hashing", 97, "CREATE EXTENSION plpython3u")
    else {
        return;
    };
    let first = c.path("holes");
    plain_backup(&dsn, &first);
    for compress in ["none", "zlib"] {
        let dest = c.path(&format!("holes-{compress}"));
        run_ok(std::process::Command::new("cp").arg("-a").arg(&first).arg(&dest));
        let copy = dest.join(relation_file(&c, "pgbench_accounts"));
        let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        let punch = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        nix::fcntl::fallocate(&f, punch, 32 << 20, 64 << 20).unwrap();
        drop(f);
        let out = pgbb_run(&["--delta", "-v", "-c", "fast", "--compress", compress, &dsn, dest.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let err = stderr(&out);
        // 134 MB: three pieces of up to 64 MB, each compared by a worker in pieces of 8 MB;
        // the hole (32–96 MB) is the second half of the first and the first half of the
        // second: one run of pieces holding nothing in each.
        assert!(err.contains("large copies go in 3 pieces of up to 64 MB, compared in parallel"), "{compress}: {err}");
        let held_nothing: usize = err
            .lines()
            .filter_map(|l| l.split_once("of its pieces held nothing in the copy (holes, or past its end)"))
            .map(|(head, _)| head.trim_end().rsplit(' ').next().unwrap().parse::<usize>().unwrap())
            .sum();
        assert_eq!(held_nothing, 2, "{compress}: {err}");
        let r = refreshed(&out);
        let travelled = r.split(", ").find(|f| f.ends_with("over the network")).unwrap_or_else(|| panic!("{r}"));
        if compress == "none" {
            assert!(travelled.contains(" MB "), "the 64 MB the copy lacked travelled: {r}");
        }
        verify_restore(&dest, &expect_pgbench());
    }
    c.assert_no_pgbb_left();
}

/// A large file compared in pieces by several workers (one piece each, in the copy itself)
/// where the copy is shorter than the server's file (its later pieces hold nothing) and where
/// it is longer (the master cuts it to the listed size once every piece is in): both come
/// out byte for byte the server's, with zlib and without, and restore.
#[test]
fn a_copy_shorter_or_longer_than_the_server_file_is_refreshed_in_pieces() {
    let Some((_ns, c, dsn)) = remote_pgbench(
        "a_copy_shorter_or_longer_than_the_server_file_is_refreshed_in_pieces",
        94,
        "CREATE EXTENSION plpython3u",
    ) else {
        return;
    };
    c.client().batch_execute("CHECKPOINT").unwrap();
    let first = c.path("lengths");
    plain_backup(&dsn, &first);
    let rel = relation_file(&c, "pgbench_accounts");
    let server = std::fs::read(c.data.join(&rel)).unwrap();
    assert!(server.len() > 128 << 20, "pgbench_accounts is not split: {} bytes", server.len());
    for (name, compress, copy_len) in
        [("shorter", "none", 70u64 << 20), ("longer", "zlib", server.len() as u64 + (50 << 20))]
    {
        let dest = c.path(&format!("lengths-{name}"));
        run_ok(std::process::Command::new("cp").arg("-a").arg(&first).arg(&dest));
        let f = std::fs::OpenOptions::new().write(true).open(dest.join(&rel)).unwrap();
        if copy_len > server.len() as u64 {
            f.write_all_at(&vec![0xa5u8; (copy_len - server.len() as u64) as usize], server.len() as u64).unwrap();
        } else {
            f.set_len(copy_len).unwrap();
        }
        drop(f);
        let out = pgbb_run(&["--delta", "-v", "-c", "fast", "--compress", compress, &dsn, dest.to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("large copies go in 3 pieces of up to 64 MB, compared in parallel"), "{name}: {err}");
        assert!(std::fs::read(dest.join(&rel)).unwrap() == server, "{name}: the copy is not the server's file");
        verify_restore(&dest, &expect_pgbench());
    }
    c.assert_no_pgbb_left();
}

/// A backup of `c` (pgbench) started as a clone that ran `sql`, raised the balance of
/// accounts 1–1000 by 1 and stopped: DEST owned by the test's user again.
fn clone_that_wrote(c: &Cluster, sql: &str) -> std::path::PathBuf {
    let dest = c.path("clone");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut clone = start_copy(&dest);
    clone
        .client()
        .batch_execute(&format!(
            "{sql}; UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 1000; CHECKPOINT"
        ))
        .unwrap();
    clone.stop();
    chown_back(&dest);
    dest
}

/// A copy that was started, wrote changes of its own and was stopped: the refresh (from a
/// server on this machine: compared as the files stream) makes it the source's again (its
/// own writes gone, the source's changes in).
#[test]
fn delta_resets_a_clone_that_ran_and_wrote() {
    let c = Cluster::new();
    c.pgbench_init(5);
    let dest = clone_that_wrote(&c, "CREATE TABLE clone_only AS SELECT 1 AS x");
    pay(&c, 1, 5);
    let out = delta(&c, &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("as they stream (the server is on this machine"), "{}", stderr(&out));
    // It was started: its pages are not all of the server's history.
    assert!(stderr(&out).contains("pages are compared by their SHA-256: DEST is not a backup that was never started"));
    let r = refreshed(&out);
    // -P counts the compared bytes: its last line reaches the whole size the summary gives.
    let text = stdout(&out) + &stderr(&out);
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("pgbb: backup complete: ")?.split(" files, ").nth(1)?.split(" in ").next())
        .unwrap_or_else(|| panic!("no summary: {text}"))
        .to_string();
    assert!(text.contains(&format!("{total} of {total} (100%)")), "no progress line reaching {total}: {text}");
    let copy = verify_restore(&dest, &expect_pgbench());
    let mut cl = copy.client();
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM pg_class WHERE relname = 'clone_only'"), 0, "{r}");
    assert_eq!(query_i64(&mut cl, "SELECT abalance::bigint FROM pgbench_accounts WHERE aid = 1"), 5);
    assert_eq!(
        query_i64(&mut cl, "SELECT count(*) FROM pgbench_accounts WHERE abalance <> 0"),
        1,
        "the clone's own updates"
    );
}

/// Evicts every file below `dir` from the page cache (written to disk first); `false` where
/// that cannot be done (a file system in memory).
fn evict(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    for p in regular_files(dir) {
        let f = std::fs::File::open(p).unwrap();
        if nix::sys::statfs::fstatfs(&f).unwrap().filesystem_type() == nix::sys::statfs::TMPFS_MAGIC {
            return false;
        }
        f.sync_all().unwrap();
        // SAFETY: advice on a descriptor we own.
        assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
    }
    true
}

/// From a server on this machine, a copy whose large files are on disk and not in memory
/// (evicted) has them copied whole rather than read back to compare; the small ones are
/// still compared. The clone's own writes are gone, the source's changes in, under pgbench
/// load, and the result restores.
#[test]
fn delta_on_this_machine_copies_whole_what_is_not_in_memory() {
    let c = Cluster::new();
    c.pgbench_init(5);
    c.client().batch_execute("CREATE EXTENSION amcheck").unwrap();
    let dest = clone_that_wrote(&c, "SELECT 1");
    if !evict(&dest) {
        eprintln!("SKIPPED delta_on_this_machine_copies_whole_what_is_not_in_memory: DEST is in memory");
        return;
    }
    // The copies that go whole: DEST's files of 1 MiB or more outside pg_wal (none of them
    // is dropped or truncated while the refresh runs).
    let large = regular_files(&dest)
        .into_iter()
        .filter(|p| !p.starts_with(dest.join("pg_wal")) && std::fs::metadata(p).unwrap().len() >= 1 << 20)
        .count();
    assert!(large >= 2, "{large}");
    let load = c.pgbench_load(2, 600);
    wait_until("pgbench to write", Duration::from_secs(60), || history_rows(&c) > 100);
    let out = delta(&c, &dest);
    load.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let whole = err
        .lines()
        .find_map(|l| l.split("--delta: ").nth(1)?.strip_suffix("costs less than reading them back from disk"))
        .unwrap_or_else(|| panic!("no file copied whole: {err}"));
    assert!(whole.starts_with(&format!("{large} files (")), "{large} files of 1 MiB or more: {whole}");
    assert!(whole.contains("not in memory are copied whole"), "{whole}");
    let compared: usize = err
        .lines()
        .find_map(|l| {
            l.split("--delta: ")
                .nth(1)?
                .split(" files (")
                .next()?
                .parse()
                .ok()
                .filter(|_| l.contains("to compare as they stream"))
        })
        .unwrap_or_else(|| panic!("no files compared: {err}"));
    assert!(compared > 100, "the small files are still compared: {compared}");
    let copy = verify_restore(&dest, &expect_pgbench());
    let mut cl = copy.client();
    // The clone's own updates are gone: an account pgbench did not touch is 0 again.
    assert_eq!(
        query_i64(
            &mut cl,
            "SELECT count(*) FROM pgbench_accounts a WHERE aid <= 1000 AND abalance <> 0 \
             AND NOT EXISTS (SELECT 1 FROM pgbench_history h WHERE h.aid = a.aid)"
        ),
        0,
        "the clone's own updates"
    );
    assert!(history_rows(&copy) > 100);
}

/// A copy on disk (evicted from the page cache) refreshed from a server over the network
/// while pgbench writes: its blocks are read past the page cache (O_DIRECT, in pieces and
/// whole files) and hashed, a worker's next piece read ahead of its turn; the result restores
/// with pgbench's invariant and amcheck.
#[test]
fn delta_over_the_network_reads_a_copy_on_disk_past_the_page_cache() {
    let test = "delta_over_the_network_reads_a_copy_on_disk_past_the_page_cache";
    let Some((_ns, c, dsn)) = remote_pgbench(test, 89, "") else { return };
    let dest = c.path("ondisk");
    plain_backup(&dsn, &dest);
    // Where O_DIRECT is known to work (ext2–4, XFS); elsewhere the page cache is the
    // expected fallback.
    #[allow(clippy::unnecessary_cast)] // the type differs between targets
    let fs = nix::sys::statfs::statfs(&dest).unwrap().filesystem_type().0 as i64;
    if ![0xEF53, 0x5846_5342].contains(&fs) || !evict(&dest) {
        eprintln!("SKIPPED {test}: DEST is not on ext4 or XFS");
        return;
    }
    let load = c.pgbench_load(2, 600);
    wait_until("pgbench to write", Duration::from_secs(60), || history_rows(&c) > 100);
    let out = pgbb_run(&["--delta", "-d", "-c", "fast", &dsn, dest.to_str().unwrap()]);
    load.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let direct: Vec<&str> =
        err.lines().filter(|l| l.contains("a copy not in the page cache is read past it")).collect();
    // pgbench_accounts goes in pieces of 64 MB, each read as one stream: its second piece
    // starts at byte 67108864 (a whole file starts at 0).
    assert!(direct.iter().any(|l| l.contains("from byte 67108864 ")), "{direct:?}: {err}");
    assert!(direct.iter().any(|l| l.contains("from byte 0 ")), "{direct:?}");
    // Its pieces (two or three) come first in the queue, and a worker is sent two requests
    // at once: one worker's second piece has its copy read as soon as the first one's
    // reading ends, before the server has compared all of the first.
    assert!(err.lines().any(|l| l.contains("\" bytes ") && l.ends_with(": its copy read ahead")), "{err}");
    verify_restore(&dest, &expect_pgbench());
}

/// A backup interrupted (Ctrl-C) and kept with --no-clean says how to finish it; --delta
/// finishes it from its record, comparing what the first run wrote.
#[test]
fn an_interrupted_backup_is_finished_by_delta() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let dest = c.path("interrupted");
    let mut child = spawn_pgbb(&["-c", "fast", "--no-clean", "-r", "20M", "-j", "1"], &c.dsn(), &dest);
    wait_until_copying(&dest);
    wait_until("some data to be copied", Duration::from_secs(60), || {
        std::fs::metadata(dest.join(relation_file(&c, "pgbench_accounts"))).map(|m| m.len() > 8 << 20).unwrap_or(false)
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let (status, _) = wait_exit(&mut child, Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("run pgbb --delta with the same DEST to finish it"), "{}", stderr(&out));
    assert!(!dest.join("global/pg_control").exists());
    assert!(dest.join("pgbb_origin").exists(), "the run's record of its origin");
    let out = delta(&c, &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("proven by pgbb_origin"), "{}", stderr(&out));
    let by = "compared by their header (LSN and checksum) up to ";
    assert!(stderr(&out).contains(by), "{}", stderr(&out));
    assert!(stderr(&out).contains("DEST holds pages pgbb copied from this cluster on timeline 1"));
    let r = refreshed(&out);
    assert!(!r.starts_with("0 B compared"), "{r}");
    verify_restore(&dest, &expect_pgbench());
}

/// An interrupted backup whose large file was being copied in pieces (under its temporary
/// name, some pieces in, the rest holes): the refresh takes that file as the copy instead of
/// fetching it all again, and the result restores.
#[test]
fn an_interrupted_backup_in_pieces_is_finished_from_its_pieces() {
    let Some((_ns, c, dsn)) = remote_pgbench("an_interrupted_backup_in_pieces_is_finished_from_its_pieces", 98, "")
    else {
        return;
    };
    let dest = c.path("pieces");
    let tmp = dest.join(format!("{}.pgbb-tmp", relation_file(&c, "pgbench_accounts")));
    let mut child =
        spawn_pgbb(&["-c", "fast", "--no-clean", "--compress", "none", "-r", "20M", "-j", "2"], &dsn, &dest);
    wait_until("a piece of pgbench_accounts to be partly written", Duration::from_secs(60), || {
        std::fs::metadata(&tmp).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512 > 8 << 20).unwrap_or(false)
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let (status, _) = wait_exit(&mut child, Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(130), "{}", stderr(&out));
    assert!(tmp.exists(), "the pieces of pgbench_accounts are kept under the temporary name");
    let out = delta_from(&dsn, &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 files an interrupted run left partly written are compared as copies"),
        "{}",
        stderr(&out)
    );
    // pgbench_accounts (about 130 MB) is in pieces of 64 MB: the ones the first run wrote
    // into are compared, side by side with the ones it never reached, which travel.
    let size: i64 = c.client().query_one("SELECT pg_relation_size('pgbench_accounts')", &[]).unwrap().get(0);
    let pieces = (size as usize).div_ceil(64 << 20);
    let err = stderr(&out);
    let side = err
        .lines()
        .find_map(|l| l.split("--delta: ").nth(1)?.strip_suffix(" that travel"))
        .unwrap_or_else(|| panic!("no pieces side by side: {err}"));
    let (held, travel) =
        side.split_once(" pieces of large files the copy holds data of are compared side by side with the ").unwrap();
    let (held, travel): (usize, usize) = (held.parse().unwrap(), travel.parse().unwrap());
    assert!(held >= 1 && travel >= 1 && held + travel == pieces, "{side}, {pieces} pieces");
    // Two workers: one takes the compared work first, the other what travels.
    assert!(err.contains("odd-numbered workers take first the work that reads the copy"), "{err}");
    assert!(!tmp.exists());
    verify_restore(&dest, &expect_pgbench());
    c.assert_no_pgbb_left();
}

/// What --delta refuses, each with DEST byte for byte as it was: a copy of another cluster, a
/// copy of another major version, a copy with a server running on it, one owned by someone
/// else, one nothing proves the origin of.
#[test]
fn delta_refuses_what_is_not_a_stopped_copy_of_this_cluster() {
    let c = Cluster::new();
    let other = Cluster::new();
    let theirs = c.path("theirs");
    let out = pgbb_run(&["-c", "fast", &other.dsn(), theirs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let refused = |dest: &Path, why: &str| {
        let before = snapshot(dest);
        let out = delta(&c, dest);
        assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
        assert!(stderr(&out).contains(why), "expected {why:?}: {}", stderr(&out));
        assert_eq!(snapshot(dest), before, "DEST was changed");
    };
    refused(&theirs, "is a copy of another cluster");

    let ours = c.path("ours");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), ours.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let version = std::fs::read(ours.join("PG_VERSION")).unwrap();
    std::fs::write(ours.join("PG_VERSION"), b"12\n").unwrap();
    refused(&ours, "holds files of PostgreSQL 12");
    std::fs::write(ours.join("PG_VERSION"), version).unwrap();

    nix::unistd::chown(&ours, Some(nix::unistd::Uid::from_raw(12345)), None).unwrap();
    refused(&ours, "is owned by user id 12345");
    chown_back(&ours);

    let junk = c.path("junk");
    std::fs::create_dir_all(junk.join("base/1")).unwrap();
    std::fs::write(junk.join("base/1/1259"), b"precious").unwrap();
    refused(&junk, "nothing in");

    {
        let running = start_copy(&ours);
        let before = snapshot(&ours);
        let out = delta(&c, &ours);
        assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
        assert!(stderr(&out).contains("running"), "{}", stderr(&out));
        assert_eq!(snapshot(&ours), before, "DEST was changed");
        drop(running);
    }
    c.assert_no_pgbb_left();
}

/// DEST absent: --delta takes a full backup and says so.
#[test]
fn delta_into_nothing_is_a_full_backup() {
    let c = Cluster::new();
    c.pgbench_init(1);
    let dest = c.path("fresh");
    let out = delta(&c, &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("is empty or absent: taking a full backup"), "{}", stderr(&out));
    assert!(!stdout(&out).contains("refreshed"), "{}", stdout(&out));
    verify_restore(&dest, &expect_pgbench());
}

/// Entries of the wrong kind are replaced, symlinks removed (never followed), a file with
/// other hard links replaced (never written through): nothing outside DEST changes.
#[test]
fn delta_replaces_wrong_kinds_and_never_writes_outside_dest() {
    let c = Cluster::new();
    c.pgbench_init(1);
    let dest = c.path("messy");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let outside = c.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"outside DEST").unwrap();
    let accounts = relation_file(&c, "pgbench_accounts");
    let branches = relation_file(&c, "pgbench_branches");
    let tellers = relation_file(&c, "pgbench_tellers");
    let db = Path::new(&accounts).parent().unwrap().to_path_buf();
    // A link where a relation file belongs, and one planted beside them.
    std::fs::remove_file(dest.join(&branches)).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), dest.join(&branches)).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join(&db).join("planted")).unwrap();
    // A directory where a file belongs, a file where a directory belongs.
    std::fs::remove_file(dest.join(&tellers)).unwrap();
    std::fs::create_dir(dest.join(&tellers)).unwrap();
    std::fs::write(dest.join(&tellers).join("inner"), b"x").unwrap();
    std::fs::remove_dir_all(dest.join("pg_notify")).unwrap();
    std::fs::write(dest.join("pg_notify"), b"not a directory").unwrap();
    // pg_wal as a link to a directory outside (an older copy's separate WAL directory).
    std::fs::remove_dir_all(dest.join("pg_wal")).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("pg_wal")).unwrap();
    // A relation file hard-linked with one outside.
    std::fs::hard_link(dest.join(&accounts), outside.join("shared")).unwrap();
    let before = snapshot(&outside);
    c.client().batch_execute("UPDATE pgbench_accounts SET abalance = 1 WHERE aid = 1; UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid = 1; CHECKPOINT").unwrap();
    let out = delta(&c, &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(snapshot(&outside), before, "something outside DEST changed");
    for p in [dest.join(&branches), dest.join(&tellers), dest.join(&accounts)] {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.is_file() && m.nlink() == 1, "{} is not a file of its own", p.display());
    }
    assert!(std::fs::symlink_metadata(dest.join("pg_wal")).unwrap().is_dir());
    assert!(std::fs::symlink_metadata(dest.join("pg_notify")).unwrap().is_dir());
    assert!(!dest.join(&db).join("planted").exists());
    verify_restore(&dest, &expect_pgbench());
}

/// A tablespace copied with -T: its target is refreshed in place (the copy's link points
/// there), a table dropped from it leaves the target, and a target DEST does not link to is
/// refused as for a full backup.
#[test]
fn delta_refreshes_a_mapped_tablespace() {
    let c = Cluster::new();
    let loc = tablespace_one(&c);
    let mut cl = c.client();
    cl.batch_execute(
        "CREATE EXTENSION amcheck; \
         CREATE TABLE t1 TABLESPACE one AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g; \
         CREATE INDEX t1_v ON t1 (v) TABLESPACE one; \
         CREATE TABLE gone TABLESPACE one AS SELECT generate_series(1, 1000) AS x",
    )
    .unwrap();
    let gone = relation_file(&c, "gone");
    let mapped = c.path("mapped");
    let map = format!("{}={}", loc.display(), mapped.display());
    let dest = c.path("with-ts");
    let out = pgbb_run(&["-c", "fast", "-T", &map, &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let in_target = |rel: &str| mapped.join(rel.splitn(3, '/').nth(2).unwrap());
    assert!(in_target(&gone).exists(), "{gone} not in the target");
    cl.batch_execute("UPDATE t1 SET v = 'changed' WHERE id % 100 = 0; DROP TABLE gone; CHECKPOINT").unwrap();

    // Another, non-empty target that DEST does not link to: refused, untouched.
    let stranger = c.path("stranger");
    std::fs::create_dir(&stranger).unwrap();
    std::fs::write(stranger.join("keep"), b"mine").unwrap();
    let other_map = format!("{}={}", loc.display(), stranger.display());
    let before = snapshot(&dest);
    let out = pgbb_run(&["--delta", "-c", "fast", "-T", &other_map, &c.dsn(), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("exists and is not empty"), "{}", stderr(&out));
    assert_eq!(snapshot(&dest), before);
    assert_eq!(std::fs::read(stranger.join("keep")).unwrap(), b"mine");

    let out = pgbb_run(&["--delta", "-v", "-c", "fast", "-T", &map, &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    refreshed(&out);
    assert!(!in_target(&gone).exists(), "the dropped table's file is still in the target");
    chown_pg(&mapped);
    let copy = verify_restore(
        &dest,
        &Expect { pgbench: false, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] },
    );
    let mut cc = copy.client();
    assert_eq!(query_i64(&mut cc, "SELECT count(*) FROM t1 WHERE v = 'changed'"), 500);
    assert_eq!(query_i64(&mut cc, "SELECT count(*) FROM pg_class WHERE relname = 'gone'"), 0);
}

/// File and directory names are bytes: names that are not UTF-8 (compared by their raw
/// components), UTF-8 that a LATIN1 server would convert, backslashes — changed, removed and
/// added on the server — are refreshed byte for byte, on UTF8 and LATIN1 clusters.
#[test]
fn delta_refreshes_names_that_are_not_utf8() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let names: [&[u8]; 4] = [b"bad\xffname", b"caf\xc3\xa9", b"back\\slash", b"dir\xe9/f\xfe"];
    for (encoding, remote) in [("UTF8", false), ("LATIN1", false), ("UTF8", true), ("LATIN1", true)] {
        if remote && !is_root() {
            continue;
        }
        let (_ns, c, dsn) = if remote {
            let (ns, c, dsn) = remote_cluster(91, Some(encoding));
            (Some(ns), c, dsn)
        } else {
            let c = Cluster::with(ClusterOpts { encoding: Some(encoding), ..Default::default() });
            let dsn = c.dsn();
            (None, c, dsn)
        };
        c.pgbench_init(1);
        let path = |n: &[u8]| c.data.join(OsStr::from_bytes(n));
        std::fs::create_dir(path(b"dir\xe9")).unwrap();
        for (i, n) in names.iter().enumerate() {
            std::fs::write(path(n), vec![i as u8; 20_000 + i]).unwrap();
        }
        chown_pg(&c.data);
        let dest = c.path("names");
        let out = pgbb_run(&["-c", "fast", &dsn, dest.to_str().unwrap()]);
        assert!(out.status.success(), "{encoding}: {}", stderr(&out));
        // Changed in the middle, grown, shrunk; one removed, one added.
        let mut changed = std::fs::read(path(names[0])).unwrap();
        changed[9000] = 0xaa;
        std::fs::write(path(names[0]), &changed).unwrap();
        std::fs::write(path(names[1]), vec![9u8; 40_000]).unwrap();
        std::fs::write(path(names[3]), b"short").unwrap();
        std::fs::remove_file(path(names[2])).unwrap();
        std::fs::write(path(b"new\xfe"), b"added").unwrap();
        chown_pg(&c.data);
        let out = delta_from(&dsn, &dest);
        assert!(out.status.success(), "{encoding}: {}", stderr(&out));
        let mode = if remote { "by block hashes" } else { "as they stream" };
        assert!(stderr(&out).contains(mode), "{encoding} {remote}: {}", stderr(&out));
        let r = refreshed(&out);
        for n in [names[0], names[1], names[3], b"new\xfe"] {
            let shown = String::from_utf8_lossy(n);
            assert_eq!(
                std::fs::read(dest.join(OsStr::from_bytes(n))).unwrap(),
                std::fs::read(path(n)).unwrap(),
                "{encoding} {shown}: {r}"
            );
        }
        assert!(!dest.join(OsStr::from_bytes(names[2])).exists(), "{encoding}: removed on the server");
        verifybackup(&dest, &[]);
    }
}

/// A file in DEST this user cannot read and write (run as postgres, a file left by root):
/// refused before anything changes, naming the file; DEST byte for byte as it was.
#[test]
fn delta_refuses_a_dest_with_a_file_it_cannot_refresh() {
    if !is_root() {
        eprintln!("SKIPPED delta_refuses_a_dest_with_a_file_it_cannot_refresh: needs root to run pgbb as postgres");
        return;
    }
    let c = Cluster::new();
    c.pgbench_init(1);
    let dest = c.path("theirs-inside");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    chown_pg(&dest);
    let locked = dest.join(relation_file(&c, "pgbench_branches"));
    nix::unistd::chown(&locked, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let before = snapshot(&dest);
    let out = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", pgbb_bin(), "--delta", "-c", "fast", &c.dsn(), dest.to_str().unwrap()])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be refreshed by this user") && stderr(&out).contains(locked.to_str().unwrap()),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&dest), before, "DEST was changed");
    c.assert_no_pgbb_left();
}

/// A copy made by pg_basebackup -Fp (proven by its pg_control and manifest) is refreshed too.
#[test]
fn delta_refreshes_a_pg_basebackup_copy() {
    let c = Cluster::new();
    c.pgbench_init(2);
    let dest = c.path("by-pg_basebackup");
    run_ok(as_pg(&client_bin("pg_basebackup")).arg("-D").arg(&dest).args([
        "-Fp",
        "-X",
        "stream",
        "-c",
        "fast",
        "-d",
        &c.dsn(),
    ]));
    chown_back(&dest);
    pay(&c, 3, 7);
    let out = delta(&c, &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    // (Its manifest names the system identifier from PostgreSQL 17 on.)
    assert!(stderr(&out).contains("proven by global/pg_control"), "{}", stderr(&out));
    refreshed(&out);
    let copy = verify_restore(&dest, &expect_pgbench());
    assert_eq!(query_i64(&mut copy.client(), "SELECT abalance::bigint FROM pgbench_accounts WHERE aid = 3"), 7);
}

/// Page checks in a refresh by block hashes (`--delta-hash`; a server over the network, a file
/// too large for a batch), composed from the blocks as they pass: a page corrupted on the
/// server before the copy was taken (unchanged, so checked in the copy's bytes) and one
/// corrupted after it (changed, so checked as it arrives) are both re-read and reported; the
/// refreshed file is the server's bytes, and its manifest checksum right (pg_verifybackup).
/// By page header (the default for this copy, a backup never started), the first page fails
/// its checksum in the copy, so it travels and is reported as well; the second one's header
/// is unchanged, so the copy keeps its own good page and the server's damage goes unseen
/// (what docs/delta.md says; `--delta-hash` is the way to see it).
#[test]
fn delta_by_hashes_reports_corrupt_pages_old_and_new() {
    use std::io::{Seek, SeekFrom, Write};
    if !is_root() {
        eprintln!("SKIPPED delta_by_hashes_reports_corrupt_pages_old_and_new: network namespaces need root");
        return;
    }
    let (_ns, mut c, dsn) = remote_cluster(93, None);
    c.pgbench_init(1);
    let rel = relation_file(&c, "pgbench_accounts");
    let corrupt = |c: &mut Cluster, block: u64| {
        c.stop();
        let mut f = std::fs::OpenOptions::new().write(true).open(c.data.join(&rel)).unwrap();
        f.seek(SeekFrom::Start(block * 8192 + 4000)).unwrap();
        f.write_all(b"corruption!").unwrap();
        drop(f);
        c.start();
    };
    c.client().batch_execute("CHECKPOINT").unwrap();
    corrupt(&mut c, 5);
    let dest = c.path("with-bad-pages");
    let out = pgbb_run(&["-c", "fast", &dsn, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let good = std::fs::read(dest.join(&rel)).unwrap();
    corrupt(&mut c, 40);
    let by_header = c.path("with-bad-pages-by-header");
    run_ok(std::process::Command::new("cp").arg("-a").arg(&dest).arg(&by_header));
    let out = pgbb_run(&["--delta", "--delta-hash", "-v", "-c", "fast", &dsn, dest.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("by block hashes"), "{err}");
    for block in [5, 40] {
        assert!(err.contains(&format!("checksum verification failed in file \"./{rel}\", block {block}")), "{err}");
    }
    assert!(err.contains("2 data page(s) failed checksum verification"), "{err}");
    let server = std::fs::read(c.data.join(&rel)).unwrap();
    assert_eq!(std::fs::read(dest.join(&rel)).unwrap(), server);
    verifybackup(&dest, &[]);
    let out = delta_from(&dsn, &by_header);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("compared by their header (LSN and checksum)"), "{err}");
    assert!(err.contains(&format!("checksum verification failed in file \"./{rel}\", block 5")), "{err}");
    assert!(err.contains("1 data page(s) failed checksum verification"), "{err}");
    let mut want = server.clone();
    want[40 * 8192..41 * 8192].copy_from_slice(&good[40 * 8192..41 * 8192]);
    assert_ne!(want, server);
    assert_eq!(
        std::fs::read(by_header.join(&rel)).unwrap(),
        want,
        "block 40: the copy's good page, the rest the server's"
    );
    verifybackup(&by_header, &[]);
}

/// One row of `COMPARE_RANGE`: size, offset, length of the block, cut.
type PieceRow = (Option<i64>, Option<i64>, usize, Option<i64>);

/// The comparison of one piece (`COMPARE_RANGE`), run on a server: only the piece's differing
/// blocks come back, each at its offset in the file; blocks past the copy's end (no hash)
/// differ; and once the file has shrunk below the size given, every read of the piece past
/// its end comes back short, with where it was cut (the worker zero-fills from there).
#[test]
fn a_piece_is_compared_within_its_bounds_and_a_shrunk_file_is_cut() {
    use sha2::Digest;
    let c = Cluster::new();
    let file = c.data.join("pgbb_piece_test");
    let mb = 1usize << 20;
    let server: Vec<u8> = (0..3 * mb).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &server).unwrap();
    chown_pg(&file);
    // The copy: the server's bytes with blocks 130 and 150 changed, ending at 1.5 MB.
    let mut copy = server[..3 * mb / 2].to_vec();
    copy[130 * 8192] ^= 1;
    copy[150 * 8192 + 9] ^= 1;
    // The hashes of the piece 1 MB..2 MB (blocks 128..256), as far as the copy goes.
    let hashes: Vec<u8> = copy[mb..].chunks(8192).flat_map(|b| sha2::Sha256::digest(b).to_vec()).collect();
    let run = |size: i64| -> Vec<PieceRow> {
        let rows = c
            .client()
            .query(
                pgbb::pg::sql::COMPARE_RANGE,
                &[&b"pgbb_piece_test".as_slice(), &(mb as i64), &hashes, &(mb as i64), &(2 * mb as i64), &size],
            )
            .unwrap();
        rows.iter()
            .map(|r| {
                let blk: Option<&[u8]> = r.get(3);
                (r.get(0), r.get(2), blk.map_or(0, <[u8]>::len), r.get(4))
            })
            .collect()
    };
    let size = 3 * mb as i64;
    let got = run(size);
    let mut want = vec![(Some(size), Some(130 * 8192), 8192, None), (Some(size), Some(150 * 8192), 8192, None)];
    // Blocks 192..256 are past the copy's end: no hash, so they differ.
    want.extend((192..256).map(|b| (Some(size), Some(b * 8192), 8192, None)));
    assert_eq!(got, want);
    // The file shrinks to 1.25 MB: the piece's first read (1 MB..2 MB) comes back short.
    std::fs::write(&file, &server[..5 * mb / 4]).unwrap();
    let got = run(size);
    let cut = 5 * mb as i64 / 4;
    assert_eq!(got.last(), Some(&(Some(size), Some(cut - 8192), 8192, Some(cut))), "{got:?}");
    assert!(got.iter().all(|g| g.1.is_some_and(|o| o >= mb as i64 && o < cut)), "{got:?}");
    // Gone: one row, no size.
    std::fs::remove_file(&file).unwrap();
    assert_eq!(run(size), vec![(None, None, 0, None)]);
}
