//! Small files in batches: a cluster of thousands of tiny tables is read (and, with
//! `--delta`, compared) with far fewer queries than files — counted in the server's own
//! statement log — and the result restores; files that vanish meanwhile, a file the server
//! cannot read, and the by-hand batch form.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::harness::*;

/// A cluster whose log names each statement's session (`%a`), for counting the workers'.
fn logging_cluster() -> Cluster {
    Cluster::with(logging_opts())
}

fn logging_opts() -> ClusterOpts {
    ClusterOpts { conf: vec!["log_line_prefix = '%m [%p] %a: '".into()], ..ClusterOpts::default() }
}

/// `n` tiny tables `{prefix}1..{prefix}n` (heap, primary key, TOAST table and its index: four
/// small files each), committed in groups (one transaction cannot lock that many).
pub(crate) fn tiny_tables(c: &Cluster, prefix: &str, n: u32) {
    let mut cl = c.client();
    cl.batch_execute(
        "CREATE OR REPLACE PROCEDURE mk(p text, n int) LANGUAGE plpgsql AS $$ \
           BEGIN FOR i IN 1..n LOOP \
             EXECUTE format('CREATE TABLE %s%s (id int PRIMARY KEY, t text); \
                             INSERT INTO %s%s VALUES (%s, %L)', p, i, p, i, i, repeat('x', 100)); \
             IF i % 200 = 0 THEN COMMIT; END IF; \
           END LOOP; END $$",
    )
    .unwrap();
    // Alone in its statement: a procedure that commits cannot run in a transaction block.
    cl.batch_execute(&format!("CALL mk('{prefix}', {n})")).unwrap();
    cl.batch_execute("CHECKPOINT").unwrap();
}

/// From here on the server logs every statement (new sessions: waited for).
fn log_statements(c: &Cluster) {
    let mut cl = c.client();
    cl.batch_execute("ALTER SYSTEM SET log_statement = 'all'").unwrap();
    cl.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until("log_statement = all", Duration::from_secs(30), || {
        c.client().query_one("SHOW log_statement", &[]).unwrap().get::<_, String>(0) == "all"
    });
}

/// The statements of pgbb's workers that read files (each whole-file, piece, batch,
/// comparison or page re-read is one), in the server log from byte `from` on.
fn worker_reads(c: &Cluster, from: usize) -> usize {
    let log = c.log();
    log[from.min(log.len())..]
        .lines()
        .filter(|l| {
            l.contains("pgbb worker")
                && l.contains("LOG:  execute")
                && (l.contains("pg_read_binary_file") || l.contains("pgbb_read_zstd"))
        })
        .count()
}

/// The files the summary line says were copied.
fn files_copied(out: &std::process::Output) -> usize {
    let text = stdout(out);
    let line = text.lines().find(|l| l.contains("backup complete: ")).unwrap_or_else(|| panic!("no summary: {text}"));
    line.split("backup complete: ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap()
}

fn expect_postgres() -> Expect {
    Expect { pgbench: false, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] }
}

/// 2600 tiny tables (10400 small files): read with fewer than a tenth as many queries as
/// files, synced in the background while they are copied (`src/flusher.rs`, from 10k files),
/// restored (pg_verifybackup, amcheck), every table's row in the copy.
#[test]
fn thousands_of_small_files_take_few_queries() {
    let c = logging_cluster();
    tiny_tables(&c, "s", 2600);
    log_statements(&c);
    let from = c.log().len();
    let dest = c.path("small");
    let out = pgbb_run(&["-v", "-c", "fast", "-j", "2", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("syncing DEST in the background"), "{}", stderr(&out));
    let (files, queries) = (files_copied(&out), worker_reads(&c, from));
    assert!(files > 10400, "{files} files");
    assert!(queries * 10 < files, "{queries} queries for {files} files");
    let copy = verify_restore(&dest, &expect_postgres());
    let mut cl = copy.client();
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM pg_class WHERE relname ~ '^s[0-9]+$'"), 2600);
    assert_eq!(
        query_i64(&mut cl, "SELECT ((SELECT id FROM s1) + (SELECT id FROM s777) + (SELECT id FROM s1500))::bigint"),
        2278
    );
    c.assert_no_pgbb_left();
}

/// `--delta` of such a copy after tiny tables changed, some were dropped and some made: the
/// comparison takes few queries too — from a server on this machine (files compared as they
/// stream) and from one over the network (by block hashes) — the dropped tables' files are
/// gone, the changes in.
#[test]
fn delta_compares_small_files_in_batches() {
    for remote in [false, true] {
        if remote && !is_root() {
            continue;
        }
        let (_ns, c, dsn) = if remote {
            let ns = NetNs::new(95);
            let opts = ClusterOpts { netns: Some((ns.name.clone(), ns.server_addr())), ..logging_opts() };
            let c = Cluster::with(opts);
            let dsn = ns.open_to(&c);
            (Some(ns), c, dsn)
        } else {
            let c = logging_cluster();
            let dsn = c.dsn();
            (None, c, dsn)
        };
        delta_in_batches(&c, &dsn, remote);
    }
}

fn delta_in_batches(c: &Cluster, dsn: &str, remote: bool) {
    tiny_tables(c, "s", 1200);
    let dest = c.path("older");
    let out = pgbb_run(&["-c", "fast", "-j", "2", dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dropped: String = c.client().query_one("SELECT pg_relation_filepath('s13')", &[]).unwrap().get(0);
    assert!(dest.join(&dropped).exists());
    c.client()
        .batch_execute(
            "UPDATE s7 SET t = 'changed'; UPDATE s8 SET t = repeat('y', 5000); \
             DROP TABLE s13; DROP TABLE s14; CREATE TABLE newer AS SELECT 42 AS x; CHECKPOINT",
        )
        .unwrap();
    log_statements(c);
    let from = c.log().len();
    let out = pgbb_run(&["--delta", "-v", "-c", "fast", "-j", "2", dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = if remote { "by block hashes" } else { "as they stream" };
    assert!(stderr(&out).contains(mode), "remote {remote}: {}", stderr(&out));
    let (files, queries) = (files_copied(&out), worker_reads(c, from));
    assert!(files > 4800, "{files} files");
    assert!(queries * 10 < files, "remote {remote}: {queries} queries for {files} files");
    assert!(!dest.join(&dropped).exists(), "the dropped table's file is still in DEST");
    let copy = verify_restore(&dest, &expect_postgres());
    let mut cl = copy.client();
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM s7 WHERE t = 'changed'"), 1);
    assert_eq!(query_i64(&mut cl, "SELECT length(t)::bigint FROM s8"), 5000);
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM pg_class WHERE relname IN ('s13', 's14')"), 0);
    assert_eq!(query_i64(&mut cl, "SELECT x::bigint FROM newer"), 42);
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM pg_class WHERE relname ~ '^s[0-9]+$'"), 1198);
}

/// Tiny tables dropped (their files removed by a checkpoint) while a large file is copied,
/// before their batches are read: the batch query finds them gone, they count as vanished,
/// and the backup is good.
#[test]
fn files_vanishing_from_a_batch_leave_a_good_backup() {
    vanishing_from_batches("none");
}

/// The same with chunks through the compression helper (zstd): small files go many per
/// query there too, and a file with no rows in its batch's answer vanished.
#[test]
fn files_vanishing_from_a_compressed_batch_leave_a_good_backup() {
    vanishing_from_batches("zstd");
}

fn vanishing_from_batches(compress: &str) {
    let c = logging_cluster();
    if compress != "none" {
        c.client().batch_execute("CREATE EXTENSION plpython3u").unwrap();
    }
    tiny_tables(&c, "v", 300);
    c.client()
        .batch_execute(
            // Hex digits: about half of them compressed, so that it takes seconds either way.
            "CREATE TABLE big AS SELECT g, md5(g::text) || md5((-g)::text) || md5((7 * g)::text) \
               || md5((13 * g)::text) || md5((17 * g)::text) || md5((19 * g)::text) AS pad \
               FROM generate_series(1, 200000) g; CHECKPOINT",
        )
        .unwrap();
    let big: String = c.client().query_one("SELECT pg_relation_filepath('big')", &[]).unwrap().get(0);
    let gone: Vec<String> = c
        .client()
        .query(
            "SELECT pg_relation_filepath(oid) FROM pg_class WHERE relname ~ '^v([1-9]|[1-9][0-9]|100)(_pkey)?$'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(gone.len(), 200);
    log_statements(&c);
    let from = c.log().len();
    let dest = c.path("vanishing");
    // One worker, throttled: the big table (largest, first) takes seconds; the tiny tables
    // come last, in batches (of compressed files too).
    let rate = if compress == "none" { "16M" } else { "4M" };
    let child = spawn_pgbb(&["-v", "-c", "fast", "-j", "1", "-r", rate, "--compress", compress], &c.dsn(), &dest);
    wait_until("the big table to be copied", Duration::from_secs(60), || {
        std::fs::read_dir(dest.join(&big).parent().unwrap()).map(|mut d| d.next().is_some()).unwrap_or(false)
    });
    let mut drop = String::new();
    for i in 1..=100 {
        drop.push_str(&format!("DROP TABLE v{i};"));
    }
    // A dropped table's first segment is removed by the checkpoint after its unlink was
    // queued to the checkpointer: two checkpoints.
    let mut cl = c.client();
    cl.batch_execute(&drop).unwrap();
    cl.batch_execute("CHECKPOINT").unwrap();
    cl.batch_execute("CHECKPOINT").unwrap();
    assert!(gone.iter().all(|f| !c.data.join(f).exists()), "the dropped tables' files are still there");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let vanished = err.lines().filter(|l| l.contains("was removed during the backup")).count();
    assert!(vanished >= 200, "{vanished} files vanished: {err}");
    let (files, queries) = (files_copied(&out), worker_reads(&c, from));
    assert!(queries * 10 < files, "{queries} queries for {files} files");
    let copy = verify_restore(&dest, &expect_postgres());
    let mut cl = copy.client();
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM pg_class WHERE relname ~ '^v[0-9]+$'"), 200);
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM big"), 200000);
}

/// By hand: a batch is answered one line per file, in its order (a missing file vanished, a
/// bad path refused, a file the server cannot read an error while the others of its batch
/// are copied); single lines still work after it; a bad header is refused.
#[test]
fn by_hand_batches_answer_each_file_in_order() {
    let c = Cluster::new();
    let secret = c.data.join("root_only");
    std::fs::write(&secret, b"not for postgres").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dest = c.path("byhand");
    let input = "batch\t5\nPG_VERSION\nnot/there\n../x\nroot_only\npg_hba.conf\tcopies/hba\nPG_VERSION\tagain\n\
                 batch\t0\nbatch\t1\npostgresql.conf\n";
    let out = run_slave(&c, &dest, input.as_bytes(), &["-v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("hello\tpgbb\t4\t"), "{text}");
    assert!(lines[1].starts_with("ok\t") && lines[1].contains("\tPG_VERSION\t"), "{text}");
    assert_eq!(lines[2], "vanished\tnot/there", "{text}");
    assert!(lines[3].starts_with("error\t../x\t"), "{text}");
    if is_root() {
        // The server (user postgres) cannot read it: the batch query fails and its files
        // are read one by one, this one with its own error.
        assert!(lines[4].starts_with("error\troot_only\t") && lines[4].contains("ermission denied"), "{text}");
    }
    assert!(lines[5].starts_with("ok\t") && lines[5].contains("\tpg_hba.conf\t"), "{text}");
    assert!(lines[6].starts_with("ok\t") && lines[6].contains("\tPG_VERSION\t"), "{text}");
    assert_eq!(lines[7].split('\t').nth(1), Some("batch\\t0"), "{text}");
    assert!(lines[7].starts_with("error\t") && lines[7].contains("bad batch header"), "{text}");
    assert!(lines[8].starts_with("ok\t") && lines[8].contains("\tpostgresql.conf\t"), "{text}");
    assert_eq!(lines.len(), 9, "{text}");
    for (copy, orig) in [("PG_VERSION", "PG_VERSION"), ("copies/hba", "pg_hba.conf"), ("again", "PG_VERSION")] {
        assert_eq!(std::fs::read(dest.join(copy)).unwrap(), std::fs::read(c.data.join(orig)).unwrap(), "{copy}");
    }
    assert!(!dest.join("root_only").exists());
}

/// A corrupt page in a small file read in a batch (and, with `--delta`, compared in one) is
/// read again after the batch query and reported as a single file's is: exit 6.
#[test]
fn a_corrupt_page_in_a_batch_is_reported() {
    use std::io::{Seek, SeekFrom, Write};
    let mut c = logging_cluster();
    tiny_tables(&c, "s", 50);
    let mut cl = c.client();
    cl.batch_execute("CREATE TABLE three AS SELECT g FROM generate_series(1, 600) g; CHECKPOINT").unwrap();
    let rel: String = cl.query_one("SELECT pg_relation_filepath('three')", &[]).unwrap().get(0);
    drop(cl);
    assert_eq!(std::fs::metadata(c.data.join(&rel)).unwrap().len(), 3 * 8192, "a small file, batched");
    let dest = c.path("clean");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    c.stop();
    let mut f = std::fs::OpenOptions::new().write(true).open(c.data.join(&rel)).unwrap();
    f.seek(SeekFrom::Start(8192 + 4000)).unwrap();
    f.write_all(b"corruption!").unwrap();
    drop(f);
    c.start();
    log_statements(&c);
    let from = c.log().len();
    let fresh = c.path("fresh");
    for (args, into) in [(vec!["-c", "fast"], &fresh), (vec!["--delta", "-c", "fast"], &dest)] {
        let out = pgbb_run(&[args.as_slice(), &[&c.dsn(), into.to_str().unwrap()]].concat());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {err}");
        assert!(err.contains(&format!("checksum verification failed in file \"./{rel}\", block 1")), "{err}");
        assert!(err.contains("1 data page(s) failed checksum verification"), "{err}");
        assert_eq!(std::fs::read(into.join(&rel)).unwrap(), std::fs::read(c.data.join(&rel)).unwrap(), "{args:?}");
    }
    let queries = worker_reads(&c, from);
    assert!(queries < 200, "{queries} queries for two runs of more than 1000 files each");
}
