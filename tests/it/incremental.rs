//! `-i OLD_MANIFEST` (issue 14): incremental backups in PostgreSQL's own format (17+). Chains of
//! pgbb's and pg_basebackup's backups in every mix, taken under pgbench load, go through
//! pg_combinebackup and pg_verifybackup of that major, start, and pass the restore check; a
//! truncated relation, dropped and new tables, a new database, non-UTF-8 names and a tablespace
//! between two backups; the bad input `-i` refuses, also under `--check`.
//!
//! The servers and tools are PostgreSQL 17 from the PyPI wheel, or the 17/18 under test in the
//! compat matrix ([`incremental_bins`]).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use sha2::Digest;

use crate::harness::*;

/// Who takes a backup: pgbb with these options (`-i OLD` for an incremental one; `PgbbEq`:
/// `--incremental=OLD`), or PostgreSQL's own pg_basebackup of that major.
#[derive(Clone, Copy)]
enum By {
    Pgbb(&'static [&'static str]),
    PgbbEq(&'static [&'static str]),
    Core,
}

fn expect_pgbench() -> Expect {
    Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] }
}

fn expect_dbs(dbs: &[&str]) -> Expect {
    Expect { pgbench: false, databases: dbs.iter().map(|d| d.to_string()).collect(), unlogged: vec![], absent: vec![] }
}

fn both(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// `pgbb -c fast EXTRA [-i OLD | --incremental=OLD] DSN DEST`, not checked.
fn pgbb_backup(dsn: &str, dest: &Path, old: Option<&Path>, eq: bool, extra: &[&str]) -> Output {
    let mut cmd = pgbb();
    cmd.args(["-c", "fast"]).args(extra);
    match (old, eq) {
        (Some(m), false) => {
            cmd.arg("-i").arg(m);
        }
        (Some(m), true) => {
            let mut a = OsString::from("--incremental=");
            a.push(m);
            cmd.arg(a);
        }
        (None, _) => {}
    }
    cmd.arg(dsn).arg(dest).output().unwrap()
}

/// `pgbb --check -i OLD DSN`, not checked.
fn pgbb_check(dsn: &str, old: &Path) -> Output {
    pgbb().arg("--check").arg("-i").arg(old).arg(dsn).output().unwrap()
}

/// A backup of `c` into `c.path(name)` by `by`, with `extra` options: full, or incremental on
/// top of the backup in `parent`. It must succeed; pgbb's summary must say it is incremental,
/// and the label must chain it to `parent`.
fn take(bins: &PgBins, c: &Cluster, by: By, name: &str, parent: Option<&Path>, extra: &[&str]) -> PathBuf {
    let dest = c.path(name);
    let old = parent.map(|p| p.join("backup_manifest"));
    match by {
        By::Core => {
            basebackup(bins, c, &dest, old.as_deref(), extra);
        }
        By::Pgbb(opts) | By::PgbbEq(opts) => {
            let all: Vec<&str> = opts.iter().chain(extra).copied().collect();
            let out = pgbb_backup(&c.dsn(), &dest, old.as_deref(), matches!(by, By::PgbbEq(_)), &all);
            assert!(out.status.success(), "pgbb into {name} failed ({}):\n{}", out.status, both(&out));
            if parent.is_some() {
                let text = both(&out);
                assert!(
                    text.to_lowercase().contains("incremental"),
                    "the summary of an incremental backup should say it is one: {text}"
                );
            }
        }
    }
    if let Some(p) = parent {
        assert_increments(&dest, p);
    }
    dest
}

/// The first word after `key` on its line of `dir`'s backup_label.
fn label_value(dir: &Path, key: &str) -> Option<String> {
    let text = fs::read_to_string(dir.join("backup_label")).unwrap();
    text.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.split(' ').next().unwrap_or("").to_string())
}

fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap_or_else(|| panic!("not an LSN: {s}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// `dir` is an incremental backup on top of `parent`, as pg_combinebackup will require: its
/// label's INCREMENTAL FROM LSN/TLI are the parent's start; its manifest is version 2, of the
/// parent's system.
fn assert_increments(dir: &Path, parent: &Path) {
    let from = label_value(dir, "INCREMENTAL FROM LSN: ")
        .unwrap_or_else(|| panic!("{}: no INCREMENTAL FROM LSN", dir.display()));
    let start = label_value(parent, "START WAL LOCATION: ").unwrap();
    assert_eq!(
        parse_lsn(&from),
        parse_lsn(&start),
        "{}: INCREMENTAL FROM LSN is not the parent's start",
        dir.display()
    );
    assert_eq!(
        label_value(dir, "INCREMENTAL FROM TLI: "),
        label_value(parent, "START TIMELINE: "),
        "{}",
        dir.display()
    );
    let manifest = fs::read_to_string(dir.join("backup_manifest")).unwrap();
    assert!(
        manifest.starts_with("{ \"PostgreSQL-Backup-Manifest-Version\": 2,"),
        "{}: not a v2 manifest",
        dir.display()
    );
    assert_eq!(
        system_identifier(&manifest),
        system_identifier(&fs::read_to_string(parent.join("backup_manifest")).unwrap())
    );
}

/// The `System-Identifier` of a manifest's text.
fn system_identifier(manifest: &str) -> Option<u64> {
    let v = manifest.split("\"System-Identifier\": ").nth(1)?;
    v.split(|ch: char| !ch.is_ascii_digit()).next()?.parse().ok()
}

/// Every file below `dir` (tablespace links followed), relative to `dir`, with its size.
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = fs::metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path().strip_prefix(dir).unwrap().to_path_buf(), m.len()));
            }
        }
    }
    out
}

fn is_incremental(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b"INCREMENTAL."))
}

/// The `INCREMENTAL.*` files below `dir`, relative to it.
fn incremental_files(dir: &Path) -> Vec<PathBuf> {
    files(dir).into_iter().map(|(p, _)| p).filter(|p| is_incremental(p)).collect()
}

/// Bytes of the files below `dir`/`sub`.
fn bytes_under(dir: &Path, sub: &str) -> u64 {
    files(&dir.join(sub)).iter().map(|(_, n)| n).sum()
}

/// The header of an INCREMENTAL file as core writes it (uint32 in native byte order): block
/// count, truncation block length, the block numbers.
fn incremental_header(path: &Path) -> (u32, u32, Vec<u32>) {
    let b = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let u = |i: usize| u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(u(0), 0xd3ae1f0d, "{}: bad incremental magic", path.display());
    let n = u(1);
    (n, u(2), (0..n as usize).map(|k| u(3 + k)).collect())
}

/// `rel` (a relation file path, e.g. base/5/16384) as its INCREMENTAL file.
fn incremental_of(rel: &str) -> String {
    let (dir, name) = rel.rsplit_once('/').unwrap();
    format!("{dir}/INCREMENTAL.{name}")
}

/// Runs each statement in its own transaction (VACUUM, CREATE DATABASE, ALTER SYSTEM need it).
fn run_each(cl: &mut postgres::Client, statements: &[&str]) {
    for s in statements {
        cl.batch_execute(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

fn history_rows(c: &Cluster) -> i64 {
    query_i64(&mut c.client(), "SELECT count(*) FROM pgbench_history")
}

/// Waits until pgbench has committed `n` more transactions.
fn wait_for_commits(c: &Cluster, n: i64) {
    let from = history_rows(c);
    wait_until(&format!("pgbench to commit {n} transactions"), Duration::from_secs(60), || history_rows(c) >= from + n);
}

/// The relation file of `table` in the current database, relative to the data directory.
fn relation_file(cl: &mut postgres::Client, table: &str) -> String {
    cl.query_one("SELECT pg_relation_filepath($1::text::regclass)", &[&table]).unwrap().get(0)
}

/// count(*) and sum(hashtext(t::text)) of a table: what its contents compare by.
fn fingerprint(cl: &mut postgres::Client, table: &str) -> (i64, i64) {
    let r = cl
        .query_one(&format!("SELECT count(*), coalesce(sum(hashtext(t::text)), 0)::int8 FROM {table} t"), &[])
        .unwrap();
    (r.get(0), r.get(1))
}

/// pg_combinebackup of `chain` into `c.path("combined")` (with `extra`: -T mappings), then the
/// restore check with that major's pg_verifybackup and server; `prepare` runs before it starts.
fn combine_and_restore(
    bins: &PgBins,
    c: &Cluster,
    chain: &[PathBuf],
    extra: &[&str],
    expect: &Expect,
    prepare: impl FnOnce(&Path),
) -> Cluster {
    let out = c.path("combined");
    combinebackup(bins, chain, &out, extra);
    verify_restore_using(bins, &out, expect, prepare)
}

/// A chain under pgbench load: the first step a full backup, each next one incremental on
/// top of the one before, each verified alone by pg_verifybackup (its files, its WAL); then
/// combined, verified, started (`prepare` first) and checked; the copy holds every transaction
/// committed before the last backup started, and none after it ended.
fn chain_under_load(steps: &[By], prepare: impl FnOnce(&Path)) {
    let bins = incremental_bins();
    let c = summarizing_cluster(&bins, &[]);
    c.pgbench_init(1);
    let load = c.pgbench_load(2, 600);
    let mut chain: Vec<PathBuf> = Vec::new();
    let (mut before, mut after) = (0, 0);
    for (i, by) in steps.iter().enumerate() {
        wait_for_commits(&c, 100);
        before = history_rows(&c);
        let dir = take(&bins, &c, *by, &format!("b{i}"), chain.last().map(PathBuf::as_path), &[]);
        after = history_rows(&c);
        verifybackup_with(&bins, &dir, &[]);
        if let Some(full) = chain.first() {
            assert!(!incremental_files(&dir).is_empty(), "{}: no INCREMENTAL file at all", dir.display());
            let (inc, whole) = (bytes_under(&dir, "base"), bytes_under(full, "base"));
            assert!(inc < whole, "{}: base/ holds {inc} bytes, the full backup's {whole}", dir.display());
        }
        chain.push(dir);
    }
    load.finish();
    let copy = combine_and_restore(&bins, &c, &chain, &[], &expect_pgbench(), prepare);
    let restored = history_rows(&copy);
    assert!(
        (before..=after).contains(&restored),
        "the copy holds {restored} transactions; {before} were committed when the last backup started, {after} when it ended"
    );
    drop(copy);
    c.assert_no_pgbb_left();
}

/// The control: pg_basebackup full, incremental, incremental, under load, through
/// pg_combinebackup and the restore check. Proves the harness (17 server and tools, the chain,
/// the checks) without pgbb.
#[test]
fn basebackup_chain_under_load_restores() {
    chain_under_load(&[By::Core, By::Core, By::Core], |_| {});
}

/// pgbb full (-j 3), pgbb incremental (-i, -j 3 --compress none), pgbb incremental
/// (--incremental=, -R): combined, restored. -R's files come through pg_combinebackup.
#[test]
fn pgbb_full_then_two_pgbb_incrementals_under_load() {
    chain_under_load(
        &[By::Pgbb(&["-j", "3"]), By::Pgbb(&["-j", "3", "--compress", "none"]), By::PgbbEq(&["-R"])],
        |combined| {
            let auto = fs::read_to_string(combined.join("postgresql.auto.conf")).unwrap();
            assert!(auto.contains("primary_conninfo"), "-R of the last backup: {auto}");
            // Restored standalone: without its standby.signal.
            fs::remove_file(combined.join("standby.signal")).expect("-R of the last backup: standby.signal");
        },
    );
}

/// pg_basebackup full, pgbb incremental on top of it.
#[test]
fn basebackup_full_then_pgbb_incremental_under_load() {
    chain_under_load(&[By::Core, By::Pgbb(&[])], |_| {});
}

/// pgbb full, pg_basebackup incremental on top of it: pgbb's manifest is what the server reads.
#[test]
fn pgbb_full_then_basebackup_incremental_under_load() {
    chain_under_load(&[By::Pgbb(&[]), By::Core], |_| {});
}

/// pgbb full, pgbb incremental (-j 1), pg_basebackup incremental on top of pgbb's incremental.
#[test]
fn pgbb_full_pgbb_incremental_then_basebackup_incremental_under_load() {
    chain_under_load(&[By::Pgbb(&[]), By::Pgbb(&["-j", "1"]), By::Core], |_| {});
}

/// A table cut short by DELETE + VACUUM between the two backups (and one row updated): its
/// main fork travels as an INCREMENTAL file whose header (blocks, truncation length) is the
/// one pg_basebackup sends from the same parent; the combined copy has its rows and its size.
fn truncation_case(by: By) {
    let bins = incremental_bins();
    let c = summarizing_cluster(&bins, &["autovacuum = off"]);
    let mut cl = c.client();
    run_each(
        &mut cl,
        &[
            "CREATE TABLE shrink (id int PRIMARY KEY, pad text)",
            "INSERT INTO shrink SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g",
            "CREATE TABLE other AS SELECT g FROM generate_series(1, 1000) g",
            "VACUUM (FREEZE)",
        ],
    );
    let full = take(&bins, &c, By::Pgbb(&[]), "full", None, &[]);
    let size = |cl: &mut postgres::Client| query_i64(cl, "SELECT pg_relation_size('shrink') / 8192");
    let blocks_before = size(&mut cl);
    run_each(
        &mut cl,
        &["DELETE FROM shrink WHERE id > 5000", "VACUUM shrink", "UPDATE shrink SET pad = 'changed' WHERE id = 17"],
    );
    let blocks_after = size(&mut cl);
    assert!(blocks_after < blocks_before / 2, "VACUUM did not truncate: {blocks_before} -> {blocks_after} blocks");
    let rel = relation_file(&mut cl, "shrink");
    let incr = take(&bins, &c, by, "incr", Some(&full), &[]);
    // pg_basebackup's incremental from the same parent, nothing written in between.
    let core = take(&bins, &c, By::Core, "core-incr", Some(&full), &[]);
    let theirs = incremental_header(&core.join(incremental_of(&rel)));
    assert_eq!(theirs.1 as i64, blocks_after, "core's truncation block length");
    let ours = incremental_header(&incr.join(incremental_of(&rel)));
    assert_eq!(ours, theirs, "the truncated relation's INCREMENTAL header (blocks, truncation length, block numbers)");
    assert!(!incr.join(&rel).exists(), "{rel} sent whole as well");
    // Every relation file is there, whole or incremental, as in core's backup.
    let names = |dir: &Path| {
        let db = Path::new(&rel).parent().unwrap();
        let mut v: Vec<_> = fs::read_dir(dir.join(db))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().trim_start_matches("INCREMENTAL.").to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&incr), names(&core), "the files of the database directory");
    let live = (fingerprint(&mut cl, "shrink"), fingerprint(&mut cl, "other"), blocks_after);
    let copy = combine_and_restore(&bins, &c, &[full, incr], &[], &expect_dbs(&["postgres"]), |_| {});
    let mut cc = copy.client();
    assert_eq!((fingerprint(&mut cc, "shrink"), fingerprint(&mut cc, "other"), size(&mut cc)), live);
    assert_eq!(query_i64(&mut cc, "SELECT count(*) FROM shrink"), 5000);
}

#[test]
fn a_relation_truncated_between_the_backups_restores_and_matches_core() {
    truncation_case(By::Pgbb(&[]));
}

/// Between the two backups a table dropped, one created, a database created: the dropped
/// table's files are gone from the incremental, the new table and every file of the new
/// database are whole (not in the old manifest; a database-wide summary entry); the copy has
/// the live server's data.
fn drop_create_case(by: By) {
    let bins = incremental_bins();
    let c = summarizing_cluster(&bins, &["autovacuum = off"]);
    let mut cl = c.client();
    cl.batch_execute(
        "CREATE TABLE kept AS SELECT g FROM generate_series(1, 5000) g; \
         CREATE TABLE gone AS SELECT g FROM generate_series(1, 5000) g",
    )
    .unwrap();
    cl.batch_execute("VACUUM").unwrap();
    let gone = relation_file(&mut cl, "gone");
    let full = take(&bins, &c, By::Pgbb(&[]), "full", None, &[]);
    assert!(full.join(&gone).exists());
    cl.batch_execute(
        "DROP TABLE gone; CREATE TABLE born AS SELECT g, md5(g::text) AS v FROM generate_series(1, 3000) g; \
         UPDATE kept SET g = -g WHERE g <= 10",
    )
    .unwrap();
    cl.batch_execute("CREATE DATABASE newdb").unwrap();
    let mut nl = c.client_db("newdb");
    nl.batch_execute("CREATE TABLE nt AS SELECT g FROM generate_series(1, 1234) g; CREATE INDEX ON nt (g)").unwrap();
    let born = relation_file(&mut cl, "born");
    let newdb: u32 = cl.query_one("SELECT oid FROM pg_database WHERE datname = 'newdb'", &[]).unwrap().get(0);
    let incr = take(&bins, &c, by, "incr", Some(&full), &[]);
    assert!(!incr.join(&gone).exists() && !incr.join(incremental_of(&gone)).exists(), "the dropped table came");
    assert!(incr.join(&born).exists(), "the new table {born} should be whole");
    let newdir = format!("base/{newdb}");
    let in_new = files(&incr.join(&newdir));
    assert!(in_new.len() > 100, "{newdir}: {} files", in_new.len());
    let inc: Vec<_> = in_new.iter().filter(|(p, _)| is_incremental(p)).collect();
    assert!(inc.is_empty(), "a database created after the full backup is sent whole: {inc:?}");
    let live = (fingerprint(&mut cl, "kept"), fingerprint(&mut cl, "born"), fingerprint(&mut nl, "nt"));
    let copy = combine_and_restore(&bins, &c, &[full, incr], &[], &expect_dbs(&["postgres", "newdb"]), |_| {});
    let (mut cc, mut cn) = (copy.client(), copy.client_db("newdb"));
    assert_eq!((fingerprint(&mut cc, "kept"), fingerprint(&mut cc, "born"), fingerprint(&mut cn, "nt")), live);
    assert!(cc.query_one("SELECT to_regclass('gone') IS NULL", &[]).unwrap().get::<_, bool>(0), "gone is back");
}

#[test]
fn a_table_dropped_one_created_and_a_database_created_between_the_backups_restore() {
    drop_create_case(By::Pgbb(&[]));
}

/// Files whose names are not UTF-8 (in the data directory's root and in a database
/// directory; changed and added between the backups) are sent whole in the incremental, listed
/// with Encoded-Path, and come through pg_combinebackup byte for byte.
fn non_utf8_case(by: By) {
    use std::os::unix::ffi::OsStrExt;
    let bins = incremental_bins();
    let c = summarizing_cluster(&bins, &[]);
    let mut cl = c.client();
    run_each(&mut cl, &["CREATE TABLE t AS SELECT g FROM generate_series(1, 5000) g", "VACUUM t"]);
    let db: u32 = cl.query_one("SELECT oid FROM pg_database WHERE datname = 'postgres'", &[]).unwrap().get(0);
    let root = OsStr::from_bytes(b"bad\xffname").to_os_string();
    let mut in_db = format!("base/{db}/").into_bytes();
    in_db.extend_from_slice(b"odd\xe9");
    let in_db = OsStr::from_bytes(&in_db).to_os_string();
    let late = OsStr::from_bytes(b"late\xfe").to_os_string();
    fs::write(c.data.join(&root), b"first version").unwrap();
    fs::write(c.data.join(&in_db), b"in a database directory").unwrap();
    chown_pg(&c.data);
    let full = take(&bins, &c, By::Pgbb(&[]), "full", None, &[]);
    fs::write(c.data.join(&root), b"second version, longer").unwrap();
    fs::write(c.data.join(&late), b"added between the backups").unwrap();
    chown_pg(&c.data);
    cl.batch_execute("UPDATE t SET g = g + 1 WHERE g < 100").unwrap();
    let incr = take(&bins, &c, by, "incr", Some(&full), &[]);
    let manifest = fs::read_to_string(incr.join("backup_manifest")).unwrap();
    for name in [&root, &in_db, &late] {
        assert_eq!(fs::read(incr.join(name)).unwrap(), fs::read(c.data.join(name)).unwrap(), "{name:?}");
        let entry = format!("{{ \"Encoded-Path\": \"{}\",", hex::encode(name.as_bytes()));
        assert!(manifest.contains(&entry), "{entry} not in the manifest");
    }
    let copy = combine_and_restore(&bins, &c, &[full, incr], &[], &expect_dbs(&["postgres"]), |_| {});
    let combined = c.path("combined");
    for name in [&root, &in_db, &late] {
        assert_eq!(fs::read(combined.join(name)).unwrap(), fs::read(c.data.join(name)).unwrap(), "{name:?}");
    }
    assert_eq!(fingerprint(&mut copy.client(), "t"), fingerprint(&mut cl, "t"));
}

#[test]
fn names_that_are_not_utf8_are_sent_whole_and_combined() {
    non_utf8_case(By::Pgbb(&[]));
}

/// A tablespace: full and incremental each mapped with -T to their own directory, an
/// INCREMENTAL file in the incremental's, pg_combinebackup maps the last one's with -T; the
/// copy uses the new location and has the live data.
fn tablespace_case(by: By) {
    let bins = incremental_bins();
    let c = summarizing_cluster(&bins, &["autovacuum = off"]);
    let loc = tablespace_one(&c);
    let mut cl = c.client();
    run_each(
        &mut cl,
        &[
            "CREATE TABLE tst TABLESPACE one AS SELECT g, md5(g::text) AS v FROM generate_series(1, 20000) g",
            "CREATE INDEX ON tst (v) TABLESPACE one",
            "VACUUM tst",
        ],
    );
    let oid: u32 = cl.query_one("SELECT oid FROM pg_tablespace WHERE spcname = 'one'", &[]).unwrap().get(0);
    let map = |to: &str| format!("{}={}", loc.display(), c.path(to).display());
    let full = take(&bins, &c, By::Pgbb(&[]), "full", None, &["-T", &map("ts-full")]);
    cl.batch_execute(
        "UPDATE tst SET v = 'changed' WHERE g % 500 = 0; \
         INSERT INTO tst SELECT g, 'new' FROM generate_series(20001, 20100) g; \
         CREATE TABLE tst2 TABLESPACE one AS SELECT 1 AS x",
    )
    .unwrap();
    let incr = take(&bins, &c, by, "incr", Some(&full), &["-T", &map("ts-incr")]);
    let link = format!("pg_tblspc/{oid}");
    assert_eq!(fs::read_link(incr.join(&link)).unwrap(), c.path("ts-incr"));
    let rel = relation_file(&mut cl, "tst");
    assert!(
        incr.join(incremental_of(&rel)).exists(),
        "tst's main fork should travel as an INCREMENTAL file: {:?}",
        files(&incr.join(&link))
    );
    let live = (fingerprint(&mut cl, "tst"), fingerprint(&mut cl, "tst2"));
    let mapping = format!("{}={}", c.path("ts-incr").display(), c.path("ts-out").display());
    let out = c.path("combined");
    combinebackup(&bins, &[full, incr], &out, &["-T", &mapping]);
    assert_eq!(fs::read_link(out.join(&link)).unwrap(), c.path("ts-out"));
    chown_pg(&c.path("ts-out"));
    let copy = verify_restore_using(&bins, &out, &expect_dbs(&["postgres"]), |_| {});
    let mut cc = copy.client();
    assert_eq!((fingerprint(&mut cc, "tst"), fingerprint(&mut cc, "tst2")), live);
    let at: String = cc.query_one("SELECT pg_tablespace_location($1)", &[&oid]).unwrap().get(0);
    assert_eq!(at, c.path("ts-out").display().to_string());
}

#[test]
fn a_tablespace_is_mapped_sent_incrementally_and_combined() {
    tablespace_case(By::Pgbb(&[]));
}

/// The control of the four cases above: each with pg_basebackup's incremental in pgbb's place
/// (a pgbb full backup below it). Proves the cases' setups and checks without pgbb's `-i`.
#[test]
fn the_cases_pass_with_pg_basebackup_incrementals() {
    truncation_case(By::Core);
    drop_create_case(By::Core);
    non_utf8_case(By::Core);
    tablespace_case(By::Core);
}

// ---- Bad input ----

/// Writes `src`'s manifest to `dst` with its body (everything before the Manifest-Checksum
/// line) edited by `edit`, and a correct Manifest-Checksum: the SHA-256 of the body, up to and
/// including its last newline. So the edit is the only fault.
fn edited_manifest(src: &Path, dst: &Path, edit: impl FnOnce(&str) -> String) {
    let text = fs::read_to_string(src).unwrap();
    let at = text.rfind("\"Manifest-Checksum\": ").expect("no Manifest-Checksum");
    let body = edit(&text[..at]);
    assert!(body.ends_with('\n'));
    let sum = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    fs::write(dst, format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n")).unwrap();
}

/// `text` with the one occurrence of `from` replaced.
fn replace_one(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} in the manifest");
    text.replacen(from, to, 1)
}

/// The WAL-Ranges entry of a manifest with one range, edited by `edit`.
fn edit_wal_range(body: &str, edit: impl FnOnce(&str) -> String) -> String {
    let at = body.find("\"WAL-Ranges\"").unwrap();
    format!("{}{}", &body[..at], edit(&body[at..]))
}

/// The fault's name, OLD_MANIFEST, the words pgbb's message must hold (in any case), and pg_basebackup's
/// (the control: the server refuses the same manifest for the same reason), if it takes it.
struct Bad {
    what: &'static str,
    manifest: PathBuf,
    words: Vec<String>,
    core: Option<&'static str>,
}

/// Bad OLD_MANIFESTs, each with one fault, for a 17+ server with summaries: missing,
/// unreadable (a directory), not a manifest, corrupt (Manifest-Checksum fails), of another
/// system, newer than the server's position, version 1, a timeline not in the server's
/// history. Each is a usage error (exit 2) whose message names the fault, and nothing is
/// created in DEST; pg_basebackup refuses each too (the fault is real). `--check -i OLD`
/// reports each (non-zero, same words) without starting a backup, and passes a good one.
#[test]
fn bad_old_manifests_are_usage_errors() {
    let bins = incremental_bins();
    let c = summarizing_cluster(&bins, &["log_statement = 'all'"]);
    let good_dir = take(&bins, &c, By::Pgbb(&[]), "full", None, &[]);
    let good = good_dir.join("backup_manifest");
    assert_eq!(backup_starts(&c.log()), 1, "the log shows the full backup's start");
    // The checksum is computed as the server does: the unedited body gives the same file.
    edited_manifest(&good, &c.path("same.manifest"), |b| b.to_string());
    assert_eq!(fs::read(c.path("same.manifest")).unwrap(), fs::read(&good).unwrap(), "Manifest-Checksum recomputed");
    let bad = bad_manifests(&c, &good);
    // The control: pg_basebackup refuses each.
    for (i, b) in bad.iter().enumerate() {
        let out = basebackup_result(&bins, &c, &c.path(&format!("core-{i}")), Some(&b.manifest), &[]);
        assert!(!out.status.success(), "pg_basebackup took the {} manifest", b.what);
        if let Some(w) = b.core {
            assert!(stderr(&out).contains(w), "{}: pg_basebackup said {}", b.what, stderr(&out));
        }
    }
    let mut problems = Vec::new();
    let out = pgbb_check(&c.dsn(), &good);
    if out.status.code() != Some(0) {
        problems.push(format!("--check -i with a good manifest: exit {:?}: {}", out.status.code(), both(&out)));
    }
    for (i, b) in bad.iter().enumerate() {
        problems.extend(refused(&c, b, &c.path(&format!("dest-{i}")), 2));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn bad(what: &'static str, manifest: PathBuf, words: &[&str], core: Option<&'static str>) -> Bad {
    Bad { what, manifest, words: words.iter().map(|w| w.to_string()).collect(), core }
}

/// The bad OLD_MANIFESTs of [`bad_old_manifests_are_usage_errors`], written next to `c`'s
/// data, made from `good` (a 17+ manifest of `c`) with one fault each.
fn bad_manifests(c: &Cluster, good: &Path) -> Vec<Bad> {
    let text = fs::read_to_string(good).unwrap();
    let sysid = system_identifier(&text).expect("a 17+ manifest has System-Identifier");
    let m = |name: &str| c.path(name);
    let (missing, dir) = (m("missing.manifest"), m("a-directory"));
    fs::create_dir(&dir).unwrap();
    fs::write(m("garbage.manifest"), "this is not a backup manifest\n").unwrap();
    // A byte changed, the checksum left as it was.
    let size = "{ \"Path\": \"PG_VERSION\", \"Size\": ";
    fs::write(m("corrupt.manifest"), replace_one(&text, &format!("{size}3,"), &format!("{size}4,"))).unwrap();
    let sysid_line = format!("\"System-Identifier\": {sysid},");
    edited_manifest(good, &m("other-system.manifest"), |b| {
        replace_one(b, &sysid_line, &format!("\"System-Identifier\": {},", sysid ^ 1))
    });
    edited_manifest(good, &m("newer.manifest"), |b| {
        edit_wal_range(b, |r| {
            let end = r.split("\"End-LSN\": \"").nth(1).unwrap().split('"').next().unwrap().to_string();
            replace_one(r, &format!("\"End-LSN\": \"{end}\""), "\"End-LSN\": \"7E/57000000\"")
        })
    });
    edited_manifest(good, &m("v1.manifest"), |b| {
        let b = replace_one(b, &format!("{sysid_line}\n"), "");
        replace_one(&b, "\"PostgreSQL-Backup-Manifest-Version\": 2,", "\"PostgreSQL-Backup-Manifest-Version\": 1,")
    });
    edited_manifest(good, &m("tli7.manifest"), |b| {
        edit_wal_range(b, |r| replace_one(r, "{ \"Timeline\": 1,", "{ \"Timeline\": 7,"))
    });
    vec![
        bad("missing", missing.clone(), &[missing.to_str().unwrap()], None),
        bad("unreadable (a directory)", dir.clone(), &[dir.to_str().unwrap()], None),
        bad("not a manifest", m("garbage.manifest"), &["manifest"], None),
        bad("corrupt", m("corrupt.manifest"), &["checksum"], Some("manifest checksum mismatch")),
        bad(
            "another system",
            m("other-system.manifest"),
            &["system identifier"],
            Some("system identifier in backup manifest"),
        ),
        bad(
            "newer than the server",
            m("newer.manifest"),
            &["7E/57000000"],
            Some("manifest requires WAL from final timeline 1 ending at 7E/57000000"),
        ),
        bad(
            "version 1",
            m("v1.manifest"),
            &["version 1"],
            Some("backup manifest version 1 does not support incremental backup"),
        ),
        bad(
            "a timeline not in the history",
            m("tli7.manifest"),
            &["timeline 7"],
            Some("timeline 7 found in manifest, but not in this server's history"),
        ),
    ]
}

/// Runs `pgbb -i` and `pgbb --check -i` with `b`'s manifest; returns what went wrong: the run
/// must exit `code` with `b.words` in its message, create nothing in `dest` and leave nothing
/// on the server; the check must fail with the same words and start no backup.
fn refused(c: &Cluster, b: &Bad, dest: &Path, code: i32) -> Vec<String> {
    let mut problems = Vec::new();
    let out = pgbb_backup(&c.dsn(), dest, Some(&b.manifest), false, &[]);
    let text = both(&out);
    if out.status.code() != Some(code) {
        problems.push(format!("{}: exit {:?}, expected {code}: {text}", b.what, out.status.code()));
    }
    for w in &b.words {
        if !text.to_lowercase().contains(&w.to_lowercase()) {
            problems.push(format!("{}: the message should contain {w:?}: {text}", b.what));
        }
    }
    if dest.exists() {
        problems.push(format!("{}: {} was created", b.what, dest.display()));
    }
    c.assert_no_pgbb_left();
    let log_before = c.log().len();
    let out = pgbb_check(&c.dsn(), &b.manifest);
    let text = both(&out);
    if out.status.success() {
        problems.push(format!("{}: --check -i passed: {text}", b.what));
    }
    for w in &b.words {
        if !text.to_lowercase().contains(&w.to_lowercase()) {
            problems.push(format!("{}: --check -i should say {w:?}: {text}", b.what));
        }
    }
    let log = c.log();
    if backup_starts(&log[log_before.min(log.len())..]) > 0 {
        problems.push(format!("{}: --check -i started a backup", b.what));
    }
    c.assert_no_pgbb_left();
    problems
}

/// The calls of pg_backup_start in a server log written with `log_statement = 'all'` (not the
/// privilege checks that name it with its argument types).
fn backup_starts(log: &str) -> usize {
    log.lines().filter(|l| l.contains("pg_backup_start(") && !l.contains("text,boolean")).count()
}

/// A server older than 17 has no WAL summaries: exit 4 (server not suitable), and the message
/// says that `--delta` refreshes a copy on any version. The manifest is otherwise good: v2,
/// with the server's system identifier (crafted from the old server's v1, checksum recomputed).
#[test]
fn a_server_older_than_17_is_refused_and_pointed_to_delta() {
    // The server under test, or 16 when that is 17+ (the compat matrix).
    let bin = if major_of(&bin_dir()) < 17 { bin_dir() } else { other_major(16) };
    let c =
        Cluster::with(ClusterOpts { bin: Some(bin), conf: vec!["log_statement = 'all'".into()], ..Default::default() });
    let dest = c.path("full");
    let out = pgbb_backup(&c.dsn(), &dest, None, false, &[]);
    assert!(out.status.success(), "{}", both(&out));
    let sysid: i64 = c.client().query_one("SELECT system_identifier FROM pg_control_system()", &[]).unwrap().get(0);
    let v2 = c.path("v2.manifest");
    edited_manifest(&dest.join("backup_manifest"), &v2, |b| {
        let b = replace_one(
            b,
            "\"PostgreSQL-Backup-Manifest-Version\": 1,\n",
            "\"PostgreSQL-Backup-Manifest-Version\": 2,\n",
        );
        replace_one(&b, "\"Files\": [", &format!("\"System-Identifier\": {sysid},\n\"Files\": ["))
    });
    let problems = refused(&c, &bad("server older than 17", v2, &["--delta", "17"], None), &c.path("incr"), 4);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `summarize_wal` off: exit 4 with the statement that turns it on. pg_basebackup refuses too.
#[test]
fn summarize_wal_off_is_refused_with_the_fix() {
    let bins = incremental_bins();
    let c = unsummarized_cluster(&bins);
    let full = take(&bins, &c, By::Pgbb(&[]), "full", None, &[]);
    let old = full.join("backup_manifest");
    let out = basebackup_result(&bins, &c, &c.path("core"), Some(&old), &[]);
    assert!(stderr(&out).contains("unless WAL summarization is enabled"), "pg_basebackup: {}", stderr(&out));
    let fault = bad("summarize_wal off", old, &["ALTER SYSTEM SET summarize_wal = on"], None);
    let problems = refused(&c, &fault, &c.path("incr"), 4);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The summaries no longer cover the range from the old backup's start: it was taken while
/// `summarize_wal` was off, and its WAL was gone when it was turned on (the summarizer starts
/// at the oldest segment there). Exit 4, "take a full backup". pg_basebackup refuses too.
#[test]
fn summaries_that_no_longer_cover_the_range_are_refused() {
    let bins = incremental_bins();
    let c = unsummarized_cluster(&bins);
    let full = take(&bins, &c, By::Pgbb(&[]), "full", None, &[]);
    let start = label_value(&full, "START WAL LOCATION: ").unwrap();
    let mut cl = c.client();
    cl.batch_execute("CREATE TABLE w (x int)").unwrap();
    // Until the full backup's first segment is gone from pg_wal (recycled at a checkpoint).
    let gone = |cl: &mut postgres::Client| -> bool {
        cl.query_one(
            "SELECT min(name) > pg_walfile_name($1::text::pg_lsn) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'",
            &[&start],
        )
        .unwrap()
        .get(0)
    };
    let mut rounds = 0;
    while !gone(&mut cl) {
        rounds += 1;
        assert!(rounds < 20, "the full backup's WAL is still in pg_wal after {rounds} checkpoints");
        cl.batch_execute("INSERT INTO w VALUES (1); SELECT pg_switch_wal(); CHECKPOINT").unwrap();
    }
    run_each(&mut cl, &["ALTER SYSTEM SET summarize_wal = on", "SELECT pg_reload_conf()"]);
    wait_until("the summarizer to write a summary", Duration::from_secs(60), || {
        let _ = cl.batch_execute("INSERT INTO w VALUES (2); CHECKPOINT");
        query_i64(&mut cl, "SELECT count(*) FROM pg_available_wal_summaries()") > 0
    });
    let old = full.join("backup_manifest");
    let out = basebackup_result(&bins, &c, &c.path("core"), Some(&old), &[]);
    assert!(stderr(&out).contains("WAL summaries are required on timeline 1"), "pg_basebackup: {}", stderr(&out));
    let fault = bad("summaries no longer cover the range", old, &["take a full backup"], None);
    let problems = refused(&c, &fault, &c.path("incr"), 4);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A full backup of a hot standby on timeline 1; the standby is promoted (timeline 2) and
/// written to; the incremental backup of it on top of the full one unites the summaries of
/// both timelines (INCREMENTAL FROM TLI 1, START TIMELINE 2), combines and restores with every
/// transaction of both timelines.
#[test]
fn an_incremental_across_a_promotion_unites_both_timelines() {
    let bins = incremental_bins();
    let mut p = summarizing_cluster(&bins, &[]);
    p.pgbench_init(1);
    run_each(&mut p.client(), &["VACUUM FREEZE", "CHECKPOINT"]);
    let s = standby_using(&bins, &p, &[]);
    wait_replayed(&s, &p);
    let full = take(&bins, &s, By::Pgbb(&[]), "full", None, &[]);
    assert!(fs::read_to_string(full.join("backup_label")).unwrap().contains("BACKUP FROM: standby"));
    let load = p.pgbench_load(2, 600);
    wait_for_commits(&p, 200);
    load.finish();
    wait_replayed(&s, &p);
    // A failover: the primary is gone and the standby has replayed all it received. Then
    // load on the new primary at once: its first checkpoint on timeline 2 (spread) is still
    // under way, so its last checkpoint is of timeline 1 (pgbb's check before the start once
    // took that timeline, found timeline 1 "incompletely" summarized, and refused).
    p.stop();
    let mut sc = s.client();
    wait_until("the standby to replay all it received", Duration::from_secs(60), || {
        sc.query_one("SELECT pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()", &[])
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    });
    drop(sc);
    promote(&s);
    assert_eq!(timeline(&s), 2);
    let load = s.pgbench_load(2, 600);
    wait_for_commits(&s, 200);
    load.finish();
    let incr = take(&bins, &s, By::Pgbb(&["-j", "3"]), "incr", Some(&full), &[]);
    assert_eq!(label_value(&incr, "START TIMELINE: ").as_deref(), Some("2"));
    assert_eq!(label_value(&incr, "INCREMENTAL FROM TLI: ").as_deref(), Some("1"));
    assert!(incr.join("pg_wal/00000002.history").exists(), "the history file of timeline 2");
    verifybackup_with(&bins, &incr, &[]);
    let want = history_rows(&s);
    let copy = combine_and_restore(&bins, &s, &[full, incr], &[], &expect_pgbench(), |_| {});
    assert_eq!(history_rows(&copy), want, "the copy holds every transaction of both timelines");
    drop(copy);
    s.assert_no_pgbb_left();
}

/// Changed blocks through the compression helper (`--compress zstd`, the server's own
/// libzstd; the ranges go through the same code with zlib, as `--delta`'s tests show), and a
/// table with most (not 90 %) of its blocks changed: an INCREMENTAL file over 128 MB, in
/// pieces for three workers, the first with the header. Combined and restored with the live
/// table's contents.
#[test]
fn changed_blocks_travel_compressed_and_large_incremental_files_in_pieces() {
    let bins = incremental_bins();
    let c = summarizing_cluster(&bins, &[]);
    let mut cl = c.client();
    run_each(
        &mut cl,
        &[
            "CREATE EXTENSION plpython3u",
            "CREATE TABLE big (id int, pad text) WITH (fillfactor = 50)",
            "INSERT INTO big SELECT g, repeat('x', 180) FROM generate_series(1, 420000) g",
            "VACUUM FREEZE big",
            "CHECKPOINT",
        ],
    );
    let full = take(&bins, &c, By::Pgbb(&[]), "full", None, &[]);
    // Four blocks of five: 80 % of the table's blocks change, in place (HOT, fillfactor 50).
    run_each(&mut cl, &["UPDATE big SET pad = repeat('y', 180) WHERE (ctid::text::point)[0]::int % 5 <> 0"]);
    let rel = relation_file(&mut cl, "big");
    let out = pgbb_backup(
        &c.dsn(),
        &c.path("incr"),
        Some(&full.join("backup_manifest")),
        false,
        &["-d", "-j", "3", "--compress", "zstd"],
    );
    let text = both(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("CROSS JOIN LATERAL pg_temp.pgbb_read_zstd("), "not through the zstd helper: {text}");
    let incr = c.path("incr");
    assert_increments(&incr, &full);
    let file = incr.join(incremental_of(&rel));
    let size = fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}\n{text}", file.display())).len();
    assert!(size > 128 << 20, "INCREMENTAL file of {size} bytes");
    assert!(text.contains("large INCREMENTAL files go in"), "no pieces: {text}");
    // The INCREMENTAL file is most of what is written: had its blocks travelled plain, the
    // ratio would stay under 1.3:1 (the table's pages compress far better).
    let ratio: f64 = text
        .split("compressed ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no compression ratio in the summary: {text}"));
    assert!(ratio > 2.0, "the changed blocks should travel compressed: {ratio}:1\n{text}");
    let (n, trunc, blocks) = incremental_header(&file);
    let total = fs::metadata(full.join(&rel)).unwrap().len() / 8192;
    assert_eq!(u64::from(trunc), total);
    assert!(u64::from(n) * 10 < total * 9 && u64::from(n) * 10 > total * 7, "{n} of {total} blocks");
    assert!(blocks.windows(2).all(|w| w[0] < w[1]));
    verifybackup_with(&bins, &incr, &[]);
    let want = fingerprint(&mut cl, "big");
    let copy = combine_and_restore(&bins, &c, &[full, incr], &[], &expect_dbs(&["postgres"]), |_| {});
    assert_eq!(fingerprint(&mut copy.client(), "big"), want);
    drop(copy);
    c.assert_no_pgbb_left();
}

/// Pages of changed blocks are verified as they travel: a changed block corrupt on the server
/// is reported (exit 6, the incremental backup kept), as a full backup reports it; a corrupt
/// block that did not change does not travel and is not read.
#[test]
fn a_corrupt_changed_page_is_reported_and_the_backup_kept() {
    let bins = incremental_bins();
    let mut c = summarizing_cluster(&bins, &[]);
    let mut cl = c.client();
    run_each(
        &mut cl,
        &["CREATE TABLE small AS SELECT g FROM generate_series(1, 20000) g", "VACUUM FREEZE small", "CHECKPOINT"],
    );
    let full = take(&bins, &c, By::Pgbb(&[]), "full", None, &[]);
    // Rows 1 and 10000: blocks 0 and 44 change.
    run_each(&mut cl, &["UPDATE small SET g = -g WHERE g IN (1, 10000)", "CHECKPOINT"]);
    let rel = relation_file(&mut cl, "small");
    drop(cl);
    c.stop();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::OpenOptions::new().write(true).open(c.data.join(&rel)).unwrap();
        for b in [44u64, 60] {
            f.seek(SeekFrom::Start(b * 8192 + 4000)).unwrap();
            f.write_all(b"corruption!").unwrap();
        }
    }
    c.start();
    let out = pgbb_backup(&c.dsn(), &c.path("incr"), Some(&full.join("backup_manifest")), false, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains(&format!("checksum verification failed in file \"./{rel}\", block 44: calculated ")), "{err}");
    assert!(!err.contains("block 60"), "an unchanged block does not travel: {err}");
    let incr = c.path("incr");
    let (_, _, blocks) = incremental_header(&incr.join(incremental_of(&rel)));
    assert!(blocks.contains(&44) && !blocks.contains(&60), "{blocks:?}");
    verifybackup_with(&bins, &incr, &[]);
    c.assert_no_pgbb_left();
}

/// An incremental backup of a standby that has had no restartpoint since the earlier backup
/// has nothing to start from (its start is the earlier backup's): refused after the start
/// with what to do (exit 4), nothing left; after a CHECKPOINT on the primary it is taken.
#[test]
fn a_standby_without_a_new_restartpoint_is_told_to_wait_for_one() {
    let bins = incremental_bins();
    let p = summarizing_cluster(&bins, &[]);
    p.pgbench_init(1);
    let s = standby_using(&bins, &p, &[]);
    wait_replayed(&s, &p);
    let full = take(&bins, &s, By::Pgbb(&[]), "full", None, &[]);
    // Written on the primary, no checkpoint: the standby's latest restartpoint stays.
    run_each(&mut p.client(), &["UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid < 100"]);
    wait_replayed(&s, &p);
    let dest = s.path("incr");
    let out = pgbb_backup(&s.dsn(), &dest, Some(&full.join("backup_manifest")), false, &[]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("CHECKPOINT on the primary"), "{text}");
    assert!(!dest.exists(), "nothing left in DEST");
    s.assert_no_pgbb_left();
    // A backup of the primary the standby has not replayed yet (its replay paused): the same
    // (exit 4), not a manifest "of another copy" (exit 2).
    run_each(&mut s.client(), &["SELECT pg_wal_replay_pause()"]);
    let ahead = take(&bins, &p, By::Pgbb(&[]), "ahead", None, &[]);
    let out = pgbb_backup(&s.dsn(), &dest, Some(&ahead.join("backup_manifest")), false, &[]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("let the standby replay past"), "{text}");
    assert!(!dest.exists(), "nothing left in DEST");
    run_each(&mut s.client(), &["SELECT pg_wal_replay_resume()"]);
    run_each(&mut p.client(), &["CHECKPOINT"]);
    wait_replayed(&s, &p);
    // The backup's start asks the standby for a restartpoint at that checkpoint.
    let incr = take(&bins, &s, By::Pgbb(&[]), "incr", Some(&full), &[]);
    verifybackup_with(&bins, &incr, &[]);
    let want = fingerprint(&mut s.client(), "pgbench_accounts");
    // Restored standalone: without the standby's standby.signal.
    let copy = combine_and_restore(&bins, &s, &[full, incr], &[], &expect_dbs(&["postgres"]), |b| {
        fs::remove_file(b.join("standby.signal")).expect("the standby's standby.signal");
    });
    assert_eq!(fingerprint(&mut copy.client(), "pgbench_accounts"), want);
    drop(copy);
    s.assert_no_pgbb_left();
}

/// A cluster of `bins` without WAL summaries, logging every statement (the bad-input tests
/// read the log to see that no backup was started).
fn unsummarized_cluster(bins: &PgBins) -> Cluster {
    Cluster::with(ClusterOpts {
        bin: Some(bins.server.clone()),
        conf: vec!["log_statement = 'all'".into()],
        ..Default::default()
    })
}
