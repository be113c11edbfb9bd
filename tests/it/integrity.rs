//! Backup integrity: backup_manifest accepted by pg_verifybackup with every algorithm,
//! tampering caught, corrupt pages on the server reported, no false alarms under load.

use std::io::{Seek, SeekFrom, Write};
use std::process::Command;

use crate::harness::*;

fn backup(c: &Cluster, name: &str, extra: &[&str]) -> (std::path::PathBuf, std::process::Output) {
    let dest = c.path(name);
    let mut args: Vec<&str> = vec!["-c", "fast"];
    args.extend(extra);
    let dsn = c.dsn();
    args.push(&dsn);
    args.push(dest.to_str().unwrap());
    let out = pgbb_run(&args);
    (dest, out)
}

/// The number of data pages the summary line says were verified.
fn pages_verified(out: &std::process::Output) -> u64 {
    let text = stdout(out);
    let line = text.lines().find(|l| l.contains("backup complete")).unwrap_or_else(|| panic!("no summary: {text}"));
    let before = line.split(" pages verified").next().filter(|b| b.len() < line.len());
    let n = before.and_then(|b| b.rsplit(' ').next()).and_then(|n| n.parse().ok());
    n.unwrap_or_else(|| panic!("the summary does not say how many pages were verified: {line}"))
}

#[test]
fn manifest_with_every_checksum_algorithm_passes_pg_verifybackup() {
    let c = Cluster::new();
    c.pgbench_init(1);
    for algo in ["NONE", "CRC32C", "SHA224", "SHA256", "SHA384", "SHA512"] {
        let (dest, out) = backup(&c, &format!("m-{algo}"), &["--manifest-checksums", algo]);
        assert!(out.status.success(), "{algo}: {}", stderr(&out));
        assert!(stdout(&out).contains("pg_verifybackup"), "the end message should say how to verify");
        let manifest = std::fs::read_to_string(dest.join("backup_manifest")).unwrap();
        if algo == "NONE" {
            assert!(!manifest.contains("Checksum-Algorithm"));
        } else {
            assert!(manifest.contains(&format!("\"Checksum-Algorithm\": \"{algo}\"")), "{algo}");
        }
        for f in ["\"Path\": \"backup_label\"", "\"Path\": \"global/pg_control\"", "\"Path\": \"PG_VERSION\""] {
            assert!(manifest.contains(f), "{f} not in the manifest");
        }
        assert!(!manifest.contains("pg_wal/"), "WAL is not listed in the manifest");
        verifybackup(&dest, &[]);
    }
    // --no-manifest writes none.
    let (dest, out) = backup(&c, "nomanifest", &["--no-manifest"]);
    assert!(out.status.success());
    assert!(!dest.join("backup_manifest").exists());
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    run_ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

#[test]
fn pg_verifybackup_catches_tampering() {
    let c = Cluster::new();
    c.pgbench_init(1);
    let (dest, out) = backup(&c, "orig", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    verifybackup(&dest, &[]);
    let rel: String = c.client().query_one("SELECT pg_relation_filepath('pgbench_accounts')", &[]).unwrap().get(0);

    // A same-size byte flip in a relation file: only the checksum can see it.
    let t = c.path("flip");
    copy_tree(&dest, &t);
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(t.join(&rel)).unwrap();
    f.seek(SeekFrom::Start(8192 + 1000)).unwrap();
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(8192 + 1000)).unwrap();
    f.write_all(&[b[0] ^ 0xff]).unwrap();
    drop(f);
    let (ok, msg) = verifybackup_result(&t);
    assert!(!ok && msg.contains("checksum mismatch") && msg.contains(&rel), "{msg}");

    let t = c.path("trunc");
    copy_tree(&dest, &t);
    let len = std::fs::metadata(t.join(&rel)).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(t.join(&rel)).unwrap().set_len(len - 8192).unwrap();
    let (ok, msg) = verifybackup_result(&t);
    assert!(!ok && msg.contains(&rel) && msg.contains("size"), "{msg}");

    let t = c.path("extra");
    copy_tree(&dest, &t);
    std::fs::write(t.join("base/extra_file"), "x").unwrap();
    let (ok, msg) = verifybackup_result(&t);
    assert!(!ok && msg.contains("extra_file") && msg.contains("not in the manifest"), "{msg}");

    let t = c.path("deleted");
    copy_tree(&dest, &t);
    std::fs::remove_file(t.join("PG_VERSION")).unwrap();
    let (ok, msg) = verifybackup_result(&t);
    assert!(!ok && msg.contains("PG_VERSION") && msg.contains("not on disk"), "{msg}");
}

/// Overwrites bytes in the middle of the given pages of a relation file, server stopped.
fn corrupt(c: &mut Cluster, rel: &str, blocks: &[u64]) {
    c.stop();
    let mut f = std::fs::OpenOptions::new().write(true).open(c.data.join(rel)).unwrap();
    for b in blocks {
        f.seek(SeekFrom::Start(b * 8192 + 4000)).unwrap();
        f.write_all(b"corruption!").unwrap();
    }
    drop(f);
    c.start();
}

#[test]
fn corrupt_pages_on_the_server_are_reported_and_the_backup_is_kept() {
    let mut c = Cluster::new();
    c.pgbench_init(2);
    let mut cl = c.client();
    cl.batch_execute("CREATE TABLE small AS SELECT g FROM generate_series(1, 10000) g").unwrap();
    cl.batch_execute("CHECKPOINT").unwrap();
    let big: String = cl.query_one("SELECT pg_relation_filepath('pgbench_accounts')", &[]).unwrap().get(0);
    let small: String = cl.query_one("SELECT pg_relation_filepath('small')", &[]).unwrap().get(0);
    drop(cl);
    corrupt(&mut c, &big, &[1, 2, 3, 10, 20, 30, 40]);
    corrupt(&mut c, &small, &[5]);

    let (dest, out) = backup(&c, "corrupt", &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    for blk in [1, 2, 3, 10, 20] {
        assert!(
            err.contains(&format!("checksum verification failed in file \"./{big}\", block {blk}: calculated ")),
            "block {blk} not reported: {err}"
        );
    }
    assert!(!err.contains(&format!("\"./{big}\", block 30:")), "more than 5 failures shown for one file: {err}");
    assert!(
        err.contains(&format!("further checksum verification failures in file \"./{big}\" will not be reported")),
        "{err}"
    );
    assert!(err.contains(&format!("file \"./{big}\" has a total of 7 checksum verification failures")), "{err}");
    assert!(err.contains(&format!("checksum verification failed in file \"./{small}\", block 5")), "{err}");
    assert!(err.contains(&format!("file \"./{small}\" has a total of 1 checksum verification failures")), "{err}");
    assert!(err.contains("8 checksum verification failures in total"), "{err}");
    assert!(err.contains("8 data page(s) failed checksum verification"), "{err}");
    // The corrupt pages are among those verified (the count includes them).
    assert!(pages_verified(&out) > 8, "{}", stdout(&out));
    // The rest of the backup is complete, and the copy holds the server's (corrupt) bytes.
    assert!(dest.join("global/pg_control").exists());
    assert_eq!(std::fs::read(dest.join(&big)).unwrap(), std::fs::read(c.data.join(&big)).unwrap());
    verifybackup(&dest, &[]);
    c.assert_no_pgbb_left();

    // --no-verify-checksums: no verification, success.
    let (dest, out) = backup(&c, "noverify", &["--no-verify-checksums"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("checksum verification failed"));
    assert_eq!(pages_verified(&out), 0, "{}", stdout(&out));
    verifybackup(&dest, &[]);
}

#[test]
fn no_false_checksum_alarms_under_concurrent_writes() {
    let c = Cluster::new();
    c.pgbench_init(5);
    let load = c.pgbench_load(2, 600);
    for i in 0..10 {
        let (dest, out) = backup(&c, &format!("load-{i}"), &["-j", "2", "-v"]);
        assert!(out.status.success(), "backup {i}: {}", stderr(&out));
        assert!(!stderr(&out).contains("checksum verification failed"), "false alarm in backup {i}: {}", stderr(&out));
        // No alarm because pages were verified and passed, not because none was looked at.
        let n = pages_verified(&out);
        assert!(n > 0, "backup {i} verified no page: {}", stdout(&out));
        assert!(stderr(&out).contains(&format!("INFO: {n} data pages verified")), "{}", stderr(&out));
        verifybackup(&dest, &[]);
        std::fs::remove_dir_all(&dest).unwrap();
    }
    load.finish();
}

#[test]
fn a_file_name_that_is_not_utf8_is_copied_and_encoded_in_the_manifest() {
    use std::os::unix::ffi::OsStrExt;
    let c = Cluster::new();
    let name = std::ffi::OsStr::from_bytes(b"bad\xffname");
    std::fs::write(c.data.join(name), b"not utf-8").unwrap();
    chown_pg(&c.data);
    let (dest, out) = backup(&c, "nonutf8", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(dest.join(name)).unwrap(), b"not utf-8");
    let manifest = std::fs::read_to_string(dest.join("backup_manifest")).unwrap();
    assert!(manifest.contains("{ \"Encoded-Path\": \"626164ff6e616d65\", \"Size\": 9,"), "{manifest}");
    verifybackup(&dest, &[]);
    // By hand too: the name travels escaped.
    let out = run_slave(&c, &c.path("byhand-nonutf8"), b"bad\\xffname\n", &[]);
    assert!(stdout(&out).contains("ok\t9\tbad\\xffname\t"), "{}", stdout(&out));
    assert_eq!(std::fs::read(c.path("byhand-nonutf8").join(name)).unwrap(), b"not utf-8");
}

/// File names are bytes, whatever the server's encoding: on SQL_ASCII and LATIN1 clusters as
/// on a UTF8 one, names that are not UTF-8, that are UTF-8 but not ASCII (which the server
/// would convert from the client's UTF8 on LATIN1), and that hold backslashes are copied
/// byte for byte under their raw names, plain and through the zlib helper, listed in the
/// manifest (Encoded-Path when not UTF-8), and the copy restores.
#[test]
fn file_names_are_copied_byte_for_byte_in_every_server_encoding() {
    use std::os::unix::ffi::OsStrExt;
    let names: [&[u8]; 5] = [b"bad\xffname", b"caf\xc3\xa9", b"back\\slash", b"b\\\xe9", b"\xe9t\xe9"];
    for encoding in ["SQL_ASCII", "LATIN1", "UTF8"] {
        let c = Cluster::with(ClusterOpts { encoding: Some(encoding), ..Default::default() });
        c.pgbench_init(1);
        c.client().batch_execute("CREATE EXTENSION plpython3u").unwrap();
        let db: u32 =
            c.client().query_one("SELECT oid FROM pg_database WHERE datname = 'postgres'", &[]).unwrap().get(0);
        let mut planted = Vec::new();
        for (i, n) in names.iter().enumerate() {
            for dir in [String::new(), format!("base/{db}/")] {
                let mut p = dir.into_bytes();
                p.extend_from_slice(n);
                std::fs::write(c.data.join(std::ffi::OsStr::from_bytes(&p)), format!("file {i} of {encoding}"))
                    .unwrap();
                planted.push(p);
            }
        }
        chown_pg(&c.data);
        for compress in ["none", "zlib"] {
            let (dest, out) = backup(&c, &format!("names-{compress}"), &["-j", "2", "--compress", compress]);
            assert!(out.status.success(), "{encoding} {compress}: {}", stderr(&out));
            let manifest = std::fs::read_to_string(dest.join("backup_manifest")).unwrap();
            for p in &planted {
                let path = std::ffi::OsStr::from_bytes(p);
                assert_eq!(std::fs::read(dest.join(path)).unwrap(), std::fs::read(c.data.join(path)).unwrap());
                let entry = match std::str::from_utf8(p) {
                    Ok(s) => format!("{{ \"Path\": {s:?},"),
                    Err(_) => format!(
                        "{{ \"Encoded-Path\": \"{}\",",
                        p.iter().map(|b| format!("{b:02x}")).collect::<String>()
                    ),
                };
                assert!(manifest.contains(&entry), "{encoding} {compress}: {entry} not in the manifest");
            }
            drop(verify_restore(&dest, &Expect { pgbench: true, databases: vec![], unlogged: vec![], absent: vec![] }));
        }
    }
}

/// A directory whose name is not UTF-8 (a stray one at the top, and one deeper with a
/// UTF-8 file inside it) is copied as pg_basebackup copies it: names and contents byte for
/// byte, the files in the manifest with Encoded-Path; pg_verifybackup accepts the copy.
#[test]
fn a_directory_name_that_is_not_utf8_is_copied_with_its_files() {
    use std::os::unix::ffi::OsStrExt;
    let c = Cluster::new();
    let top = c.data.join(std::ffi::OsStr::from_bytes(b"stray\xe9dir"));
    let deeper = top.join(std::ffi::OsStr::from_bytes(b"sub\xff"));
    std::fs::create_dir_all(&deeper).unwrap();
    std::fs::write(top.join("plain.txt"), b"in a latin-1 directory").unwrap();
    std::fs::write(deeper.join(std::ffi::OsStr::from_bytes(b"f\xfe")), vec![7u8; 70_000]).unwrap();
    chown_pg(&c.data);
    let (dest, out) = backup(&c, "nonutf8-dir", &["--chunk-size", "16k"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let copy = |p: &std::path::Path| dest.join(p.strip_prefix(&c.data).unwrap());
    assert_eq!(std::fs::read(copy(&top.join("plain.txt"))).unwrap(), b"in a latin-1 directory");
    assert_eq!(std::fs::read(copy(&deeper.join(std::ffi::OsStr::from_bytes(b"f\xfe")))).unwrap(), vec![7u8; 70_000]);
    let manifest = std::fs::read_to_string(dest.join("backup_manifest")).unwrap();
    // "stray\xe9dir/plain.txt" and "stray\xe9dir/sub\xff/f\xfe", hex-encoded.
    assert!(
        manifest.contains("\"Encoded-Path\": \"7374726179e96469722f706c61696e2e747874\", \"Size\": 22,"),
        "{manifest}"
    );
    assert!(
        manifest.contains("\"Encoded-Path\": \"7374726179e96469722f737562ff2f66fe\", \"Size\": 70000,"),
        "{manifest}"
    );
    verifybackup(&dest, &[]);
}

/// A stray file in pg_wal whose name is not UTF-8 (it cannot be WAL) is left behind, as
/// pg_basebackup leaves it; the WAL child used to panic on it.
#[test]
fn a_stray_pg_wal_name_that_is_not_utf8_is_skipped() {
    use std::os::unix::ffi::OsStrExt;
    let c = Cluster::new();
    let stray = std::ffi::OsStr::from_bytes(b"stray\xff");
    std::fs::write(c.data.join("pg_wal").join(stray), b"x").unwrap();
    chown_pg(&c.data);
    let (dest, out) = backup(&c, "stray-wal", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dest.join("pg_wal").join(stray).exists());
    verifybackup(&dest, &[]);
}

/// PostgreSQL 17+: manifest version 2 carries the cluster's System-Identifier, which
/// pg_verifybackup 17+ compares with the copy's pg_control. Older servers: version 1, none.
#[test]
fn manifest_version_and_system_identifier_follow_the_server() {
    let c = Cluster::new();
    let (version, sysid): (i32, i64) = {
        let r = c
            .client()
            .query_one(
                "SELECT current_setting('server_version_num')::int, system_identifier FROM pg_control_system()",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let (dest, out) = backup(&c, "sysid", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = std::fs::read_to_string(dest.join("backup_manifest")).unwrap();
    if version >= 170000 {
        assert!(
            manifest.starts_with(&format!(
                "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {sysid},\n"
            )),
            "{}",
            &manifest[..120]
        );
        println!("MATRIX sysid ok");
    } else {
        assert!(manifest.starts_with("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\""), "{}", &manifest[..80]);
    }
    verifybackup(&dest, &[]);
}

/// A file in a database directory whose name has a segment number beyond any real
/// relation's: the page verifier computes its block number as core does (32-bit, wrapping)
/// instead of a worker dying on an arithmetic overflow.
#[test]
fn a_segment_number_past_the_largest_relation_is_verified_not_fatal() {
    let c = Cluster::new();
    let oid: u32 = c.client().query_one("SELECT oid FROM pg_database WHERE datname = 'postgres'", &[]).unwrap().get(0);
    let stray = format!("base/{oid}/99999.40000");
    std::fs::write(c.data.join(&stray), vec![0u8; 2 * 8192]).unwrap();
    chown_pg(&c.data);
    let (dest, out) = backup(&c, "bigsegno", &["-v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(dest.join(&stray)).unwrap(), vec![0u8; 2 * 8192]);
    verifybackup(&dest, &[]);
}
