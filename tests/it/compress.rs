//! Compressed chunks through the temporary PL/Python helpers (zlib, and zstd from the
//! server's own libzstd), and the fallbacks.

use crate::harness::*;
use crate::slave::walk;
use std::process::Stdio;

fn slave_copy(c: &Cluster, dest: &std::path::Path, files: &[String], compress: &str) -> String {
    let input: String = files.iter().map(|f| format!("{f}\n")).collect();
    let out = run_slave(c, dest, input.as_bytes(), &["-v", "--compress", compress, "--chunk-size", "64k"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().filter(|l| l.starts_with("ok\t")).count(), files.len(), "{}", stdout(&out));
    stderr(&out)
}

#[test]
fn compressed_chunks_equal_plain_chunks_and_the_server_files() {
    let c = Cluster::new();
    let mut cl = c.client();
    cl.batch_execute(
        "CREATE EXTENSION plpython3u; \
         CREATE TABLE z AS SELECT g, md5(g::text) AS h, repeat('abc', 50) AS pad FROM generate_series(1, 100000) g; \
         CREATE INDEX ON z (h)",
    )
    .unwrap();
    cl.batch_execute("VACUUM z").unwrap();
    cl.batch_execute("CHECKPOINT").unwrap();
    let oid: u32 = cl.query_one("SELECT oid FROM pg_database WHERE datname = 'postgres'", &[]).unwrap().get(0);
    let files: Vec<String> = walk(&c.data.join(format!("base/{oid}")))
        .into_iter()
        .filter(|f| !f.starts_with("pg_internal"))
        .map(|f| format!("base/{oid}/{f}"))
        .collect();
    assert!(files.len() > 100);
    let (a, b, z) = (c.path("zlib"), c.path("plain"), c.path("zstd"));
    let err = slave_copy(&c, &a, &files, "zlib:6");
    assert!(err.contains("chunks travel zlib:6"), "{err}");
    let err = slave_copy(&c, &b, &files, "none");
    assert!(err.contains("chunks travel plain"), "{err}");
    let err = slave_copy(&c, &z, &files, "zstd:3");
    assert!(err.contains("chunks travel zstd:3"), "{err}");
    for f in &files {
        let src = std::fs::read(c.data.join(f)).unwrap();
        assert_eq!(std::fs::read(a.join(f)).unwrap(), src, "{f} differs (zlib)");
        assert_eq!(std::fs::read(b.join(f)).unwrap(), src, "{f} differs (none)");
        assert_eq!(std::fs::read(z.join(f)).unwrap(), src, "{f} differs (zstd)");
    }
    // The helper lived in pg_temp of the slaves' sessions only.
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'pgbb%'"), 0);
}

#[test]
fn zlib_backup_under_load_restores_and_leaves_nothing() {
    let c = Cluster::new();
    c.pgbench_init(5);
    let out = compressed_backup_under_load(&c, "zlib", "-v", |_| {});
    assert!(stderr(&out).contains("chunks travel compressed (zlib:1)"), "{}", stderr(&out));
}

/// A backup of `c` (pgbench, plpython3u) with `--compress compress` and log flag `log` while
/// pgbench writes, `during` run meanwhile; then nothing of pgbb left on the server, and the
/// copy restores (pgbench's invariants, amcheck, pg_verifybackup). Its output.
fn compressed_backup_under_load(
    c: &Cluster,
    compress: &str,
    log: &str,
    during: impl FnOnce(&Cluster),
) -> std::process::Output {
    c.client().batch_execute("CREATE EXTENSION plpython3u; CREATE EXTENSION amcheck").unwrap();
    let dest = c.path(&format!("backup-{compress}"));
    let load = c.pgbench_load(2, 600);
    during(c);
    let out = pgbb_run(&["-j", "2", "-c", "fast", log, "--compress", compress, &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    load.finish();
    c.assert_no_pgbb_left();
    assert_eq!(query_i64(&mut c.client(), "SELECT count(*) FROM pg_proc WHERE proname LIKE 'pgbb%'"), 0);
    verify_restore(
        &dest,
        &Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] },
    );
    out
}

/// `--compress zstd`: each chunk a zstd frame from the server's own libzstd (PostgreSQL 15
/// here is linked with it), through a helper gone with the sessions; the copy restores.
#[test]
fn zstd_backup_under_load_restores_and_leaves_nothing() {
    let c = Cluster::new();
    c.pgbench_init(5);
    let out = compressed_backup_under_load(&c, "zstd", "-d", |c| {
        let check = pgbb_run(&["--check", &c.dsn()]);
        assert!(stdout(&check).contains("compressed chunks (zstd, the server's own libzstd)"), "{}", stdout(&check));
    });
    assert!(stderr(&out).contains("chunks travel compressed (zstd:1)"), "{}", stderr(&out));
    // Files and WAL came through the zstd helper, never the zlib one (the statements, -d).
    assert!(stderr(&out).contains("SQL: SELECT pg_temp.pgbb_read_zstd($1, $2, $3, $4, $5)"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("pgbb_read_zlib"), "{}", stderr(&out));
    assert!(stderr(&out).contains("chunks travel zstd:1 in 512 KiB chunks"), "{}", stderr(&out));
    assert!(stdout(&out).contains("over the network)"), "the summary gives the ratio: {}", stdout(&out));
}

/// A server whose postgres has no libzstd (PostgreSQL 15 of the PyPI wheel, with
/// plpython3u): `--compress zstd` is refused before DEST is made, saying why and what to use;
/// `auto` over the network takes zlib and says why not zstd.
#[test]
fn zstd_where_the_server_has_none_is_refused_and_auto_takes_zlib() {
    if !is_root() {
        eprintln!("SKIPPED zstd_where_the_server_has_none: network namespaces need root");
        return;
    }
    let bin = wheel_bin(15);
    let ns = NetNs::new(74);
    let c = Cluster::with(ClusterOpts {
        netns: Some((ns.name.clone(), ns.server_addr())),
        bin: Some(bin),
        ..Default::default()
    });
    let tcp = ns.open_to(&c);
    c.client()
        .batch_execute("CREATE EXTENSION plpython3u; CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        .unwrap();
    let dest = c.path("zstd");
    let out = pgbb_run(&["--compress", "zstd", "-c", "fast", &tcp, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("--compress zstd: "), "{}", stderr(&out));
    assert!(stderr(&out).contains("--compress zstd: this server has no libzstd loaded"), "{}", stderr(&out));
    assert!(stderr(&out).contains("use --compress zlib or auto"), "{}", stderr(&out));
    assert!(!dest.exists(), "DEST created although nothing was backed up");
    c.assert_no_pgbb_left();
    let check = pgbb_run(&["--check", &tcp]);
    assert!(
        stdout(&check).contains("compressed chunks (zlib; not zstd: this server has no libzstd"),
        "{}",
        stdout(&check)
    );
    let out = pgbb_run(&["-v", "-c", "fast", &tcp, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("chunks travel compressed (zlib:1) through a temporary helper"), "{}", stderr(&out));
    assert!(stderr(&out).contains("; not zstd: "), "{}", stderr(&out));
    assert!(stderr(&out).contains("chunks travel zlib:1 in 512 KiB chunks"), "{}", stderr(&out));
    c.assert_no_pgbb_left();
}

#[test]
fn zlib_without_plpython_fails_clearly_and_auto_falls_back() {
    let c = Cluster::new();
    let dest = c.path("nozlib");
    let out = pgbb_run(&["--compress", "zlib", "-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("plpython3u"), "{}", stderr(&out));
    assert!(!dest.exists(), "DEST created although nothing was backed up");
    c.assert_no_pgbb_left();
    let out = pgbb_run(&["--compress", "auto", "-v", "-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("chunks travel uncompressed (the server is on this machine"), "{}", stderr(&out));
    // A slave asked for zlib explicitly says why it cannot.
    let out = pgbb()
        .args(["--slave", "--stdin", "--compress", "zlib"])
        .arg(c.dsn())
        .arg(c.path("s"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("fatal\t"), "{}", stdout(&out));
    assert!(stderr(&out).contains("plpython3u"), "{}", stderr(&out));
}

#[test]
fn auto_compresses_over_the_network_only_and_falls_back_without_plpython() {
    if !is_root() {
        eprintln!("SKIPPED auto_compresses_over_the_network_only: network namespaces need root");
        return;
    }
    let ns = NetNs::new(79);
    let c = Cluster::with(ClusterOpts { netns: Some((ns.name.clone(), ns.server_addr())), ..Default::default() });
    let tcp = ns.open_to(&c);
    c.pgbench_init(2);
    // Over the network without plpython3u: plain chunks, and the log says why.
    let d1 = c.path("auto-plain");
    let out = pgbb_run(&["-v", "-c", "fast", &tcp, d1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("chunks travel uncompressed: the language plpython3u is not installed"),
        "{}",
        stderr(&out)
    );
    // With it: the server's own zstd (PostgreSQL 15 here is linked with libzstd), and the
    // copy restores.
    c.client().batch_execute("CREATE EXTENSION plpython3u").unwrap();
    let d2 = c.path("auto-zstd");
    let out = pgbb_run(&["-v", "-c", "fast", "-j", "2", &tcp, d2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("chunks travel compressed (zstd:1)"), "{}", stderr(&out));
    // The default chunk follows the method (docs/benchmarks.md): 512 KiB compressed.
    assert!(stderr(&out).contains("chunks travel zstd:1 in 512 KiB chunks"), "{}", stderr(&out));
    assert!(stdout(&out).contains("over the network)"), "the summary gives the ratio: {}", stdout(&out));
    verify_restore(
        &d2,
        &Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] },
    );
    // The same server through its Unix socket: on this machine, plain.
    let d3 = c.path("auto-local");
    let out = pgbb_run(&["-v", "-c", "fast", &c.dsn(), d3.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("chunks travel uncompressed (the server is on this machine"), "{}", stderr(&out));
    assert!(stderr(&out).contains("chunks travel plain in 128 KiB chunks"), "{}", stderr(&out));
    c.assert_no_pgbb_left();
}

/// A chunk that does not compress travels stored (zlib level 0, read as any other zlib
/// stream) once one of them has shown that compressing does not pay, and compression comes
/// back with the first chunk whose sample compresses: the server spends no deflate time on
/// random bytes, and text still travels small.
/// `pgbb_sample` of the data directory through the temporary helper at level 1, in chunks of
/// `chunk` bytes: the header row, then the chunks.
fn read_sample(cl: &mut postgres::Client, chunk: usize) -> Vec<Vec<u8>> {
    cl.query("SELECT pg_temp.pgbb_read_zlib($1, $2, 1, -1, -1)", &[&b"pgbb_sample".as_slice(), &(chunk as i64)])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Writes `pgbb_sample` in the data directory and returns its bytes: `random` bytes of
/// pseudo-random words (the first `zeros` bytes of each 8 kB page zero), then `text` bytes of
/// text rows.
fn write_sample(c: &Cluster, random: usize, zeros: usize, text: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut data: Vec<u8> = (0..random / 8)
        .flat_map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i * 8) % 8192 < zeros { 0 } else { x }.to_le_bytes()
        })
        .collect();
    data.extend((0..).flat_map(|i: u32| format!("row {i} of a text table, ").into_bytes()).take(text));
    std::fs::write(c.data.join("pgbb_sample"), &data).unwrap();
    data
}

/// The zstd helper itself: a header row (size, mtime), then one zstd frame per chunk, each
/// with its content size, decoding to the file's bytes; random pages come out no larger than
/// zstd's stored form, text much smaller; a range gives that range only; a missing file no
/// row at all.
#[test]
fn the_zstd_helper_sends_frames_of_the_files_bytes() {
    let c = Cluster::new();
    let mut cl = c.client();
    cl.batch_execute("CREATE EXTENSION plpython3u").unwrap();
    cl.batch_execute(pgbb::pg::sql::CREATE_ZSTD_READER).unwrap();
    const CHUNK: usize = 512 * 1024;
    let data = write_sample(&c, 2 * CHUNK, 0, 2 * CHUNK + 100);
    let read = |cl: &mut postgres::Client, path: &[u8], off: i64, want: i64| -> Vec<Vec<u8>> {
        cl.query("SELECT pg_temp.pgbb_read_zstd($1, $2, 1, $3, $4)", &[&path, &(CHUNK as i64), &off, &want])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let rows = read(&mut cl, b"pgbb_sample", 0, -1);
    assert_eq!(rows.len(), 6, "a header row and five chunks");
    assert_eq!(i64::from_be_bytes(rows[0][..8].try_into().unwrap()), data.len() as i64);
    let mut back = Vec::new();
    for (i, frame) in rows[1..].iter().enumerate() {
        assert!(frame.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]), "chunk {i} is not a zstd frame");
        let size = zstd::zstd_safe::get_frame_content_size(frame).unwrap().unwrap();
        assert_eq!(size as usize, CHUNK.min(data.len() - i * CHUNK), "chunk {i}'s content size");
        match i {
            0 | 1 => assert!(frame.len() <= CHUNK + 64, "random chunk {i}: {} bytes", frame.len()),
            2 | 3 => assert!(frame.len() < CHUNK / 4, "text chunk {i} not compressed: {} bytes", frame.len()),
            _ => {}
        }
        back.extend(zstd::bulk::decompress(frame, CHUNK).unwrap());
    }
    assert!(back == data, "the frames do not decode to the file's bytes");
    // A range: its bytes only (the header gives the range's size).
    let rows = read(&mut cl, b"pgbb_sample", CHUNK as i64 + 5, 1000);
    assert_eq!((rows.len(), i64::from_be_bytes(rows[0][..8].try_into().unwrap())), (2, 1000));
    assert!(zstd::bulk::decompress(&rows[1], CHUNK).unwrap() == data[CHUNK + 5..CHUNK + 1005]);
    assert!(read(&mut cl, b"no_such_file", 0, -1).is_empty());
}

#[test]
fn chunks_that_do_not_compress_travel_stored_and_text_compressed() {
    let c = Cluster::new();
    let mut cl = c.client();
    cl.batch_execute("CREATE EXTENSION plpython3u").unwrap();
    cl.batch_execute(pgbb::pg::sql::CREATE_ZLIB_READER).unwrap();
    const CHUNK: usize = 512 * 1024;
    // Pages like those of a table of random bytes, a fifth of each page compressible (free
    // space, tuple headers: zeros here): level 1 gets them to 0.8 of their size, at the price
    // of deflating everything.
    let mut data = write_sample(&c, 4 * CHUNK, 1640, 4 * CHUNK);
    let rows = read_sample(&mut cl, CHUNK);
    assert_eq!(rows.len(), 9, "a header row and eight chunks");
    // Stored: the 64 KiB blocks level 0 writes (5 bytes each) and the zlib header and trailer.
    // Level 1 writes random bytes as a stored block per 16 K literals (166 bytes over, here).
    let stored = CHUNK + 6 + 5 * CHUNK.div_ceil(65535);
    for (i, row) in rows[1..].iter().enumerate() {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(row.as_slice()), &mut out).unwrap();
        assert!(out == data[i * CHUNK..(i + 1) * CHUNK], "chunk {i} does not decompress to the file's bytes");
        match i {
            1..=3 => assert!(
                row.len() > CHUNK && row.len() <= stored,
                "chunk {i} of random pages: {} bytes, stored is {stored}",
                row.len()
            ),
            4..=7 => assert!(row.len() < CHUNK / 4, "text chunk {i} not compressed: {} bytes", row.len()),
            _ => {}
        }
    }
    // Range by range, as a piece or a run of blocks is read: the choice carries over from one
    // call to the next for the same file, so only the first range is deflated.
    let mut range = |off: i64| -> Vec<u8> {
        let rows = cl
            .query(
                "SELECT pg_temp.pgbb_read_zlib($1, $2, 1, $3, $2)",
                &[&b"pgbb_sample".as_slice(), &(CHUNK as i64), &off],
            )
            .unwrap();
        assert_eq!(rows.len(), 2, "a header row and one chunk");
        rows[1].get(0)
    };
    assert!(range(0).len() < CHUNK, "the first range is deflated");
    for k in 1..=3 {
        let n = range(k * CHUNK as i64).len();
        assert!(n > CHUNK && n <= stored, "range {k} of random pages: {n} bytes, stored is {stored}");
    }
    // The same random pages, their zeros now a page's hole (pd_lower 1000, pd_upper 2640):
    // stored chunks leave the holes out ('P' and pages without them), and unpack to the file.
    for (k, page) in data[..4 * CHUNK].chunks_mut(8192).enumerate() {
        // Random bytes where the zeros were (another stream of them).
        for (j, b) in page[..1640].iter_mut().enumerate() {
            *b = (k * 7919 + j * 104_729).to_le_bytes()[1] ^ (j as u8).wrapping_mul(151);
        }
        page[12..16].copy_from_slice(&[0xe8, 0x03, 0x50, 0x0a]);
        page[1000..2640].fill(0);
    }
    std::fs::write(c.data.join("pgbb_sample"), &data[..4 * CHUNK]).unwrap();
    let rows = read_sample(&mut cl, CHUNK);
    assert_eq!(rows.len(), 5, "a header row and four chunks");
    let without = CHUNK - CHUNK / 8192 * (1640 - 4) + 1;
    for (i, row) in rows[1..].iter().enumerate() {
        let mut out = Vec::new();
        pgbb::page_holes::unpack(row, CHUNK as u64, &mut out).unwrap();
        assert!(out == data[i * CHUNK..(i + 1) * CHUNK], "chunk {i} does not unpack to the file's bytes");
        if i > 0 {
            assert_eq!((row[0], row.len()), (pgbb::page_holes::STORED_WITHOUT_HOLES, without), "chunk {i}");
        }
    }
}

/// Plain chunks from a server across a network, where the link is the limit (400 Mbit/s
/// here), leave out the zeros in the middle of data pages: far fewer bytes travel than the
/// backup holds, every file comes back byte for byte (a page whose hole is not all zeros
/// among them: it travels whole), and the backup restores, taken under pgbench load.
#[test]
fn plain_chunks_over_a_network_leave_page_holes_behind() {
    if !is_root() {
        eprintln!("SKIPPED plain_chunks_over_a_network_leave_page_holes_behind: network namespaces need root");
        return;
    }
    let (ns, c, dsn) = remote_cluster(99, None);
    ns.limit("400mbit");
    c.pgbench_init(5);
    let mut cl = c.client();
    // About 6 rows in each page: most of every page is its hole (about 45 MB in all). Frozen,
    // so that nothing changes its pages while they are copied and compared.
    cl.batch_execute(
        "CREATE EXTENSION amcheck; \
         CREATE TABLE sparse WITH (fillfactor = 10, autovacuum_enabled = off) \
             AS SELECT g, repeat('s', 100) AS pad FROM generate_series(1, 40000) g",
    )
    .unwrap();
    cl.batch_execute("VACUUM (FREEZE) sparse").unwrap();
    cl.batch_execute("CHECKPOINT").unwrap();
    let oid: u32 = cl.query_one("SELECT oid FROM pg_database WHERE datname = 'postgres'", &[]).unwrap().get(0);
    let sparse: String = cl.query_one("SELECT pg_relation_filepath('sparse')", &[]).unwrap().get(0);
    // A file named like a relation: a page whose "hole" holds one byte that is not zero, then
    // the same page with its hole all zeros (both too new for page verification to check).
    let mut page = vec![0u8; 8192];
    page[..8].fill(0xff);
    page[12..16].copy_from_slice(&[24, 0, 0, 0x20]);
    let mut odd = page.clone();
    odd[4000] = 1;
    let planted = format!("base/{oid}/3999999999");
    std::fs::write(c.data.join(&planted), [odd, page].concat()).unwrap();
    chown_pg(&c.data.join(&planted));
    let load = c.pgbench_load(2, 600);
    let dest = c.path("holes");
    let out =
        pgbb_run(&["-v", "--log-format", "json", "-c", "fast", "--compress", "none", &dsn, dest.to_str().unwrap()]);
    load.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("data pages without their holes"), "{err}");
    let summary: serde_json::Value = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary: {err}"));
    let (bytes, wire) = (summary["bytes"].as_u64().unwrap(), summary["network_bytes"].as_u64().unwrap());
    // At most 16 MB of them are the zeros after the backup's stop in its last WAL segment.
    assert!(bytes - wire > (16 + 30) << 20, "{bytes} bytes in the backup, {wire} over the network");
    for f in [&planted, &sparse] {
        assert!(std::fs::read(dest.join(f)).unwrap() == std::fs::read(c.data.join(f)).unwrap(), "{f} differs");
    }
    let expect = Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] };
    let copy = verify_restore(&dest, &expect);
    assert_eq!(query_i64(&mut copy.client(), "SELECT count(*) FROM sparse"), 40000);
    c.assert_no_pgbb_left();
}

/// The reads that send data pages without their holes give, rebuilt, exactly what the plain
/// reads give, row for row: whole files and ranges (unaligned, shorter than a page, empty,
/// past the end), chunk sizes that are not a multiple of a page, a short last page, an empty
/// and a missing file. Runs the SQL on the server (no network needed).
#[test]
fn reads_without_holes_rebuild_to_what_plain_reads_give() {
    use pgbb::pg::sql;
    let c = Cluster::new();
    let mut cl = c.client();
    cl.batch_execute("CREATE TABLE t AS SELECT g, repeat('x', g % 300) AS pad FROM generate_series(1, 30000) g")
        .unwrap();
    // As in pgbb's sessions (sql::SESSION_SETUP): JIT would compile every one of these reads.
    cl.batch_execute("CHECKPOINT; SET jit = off").unwrap();
    let rel: String = cl.query_one("SELECT pg_relation_filepath('t')", &[]).unwrap().get(0);
    let pages = std::fs::read(c.data.join(&rel)).unwrap();
    assert!(pages.len() > 40 * 8192);
    for (name, bytes) in [("pgbb_tail", [&pages[..3 * 8192], &pages[..20]].concat()), ("pgbb_empty", Vec::new())] {
        std::fs::write(c.data.join(name), bytes).unwrap();
        chown_pg(&c.data.join(name));
    }
    type Row = (Option<i64>, Option<i64>, Option<Vec<u8>>);
    let mut read = |q: &str, params: &[&(dyn postgres::types::ToSql + Sync)]| -> Vec<Row> {
        cl.query(q, params).unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
    };
    let mut saved = 0;
    for path in [rel.as_str(), "pgbb_tail", "pgbb_empty", "pgbb_missing"] {
        let raw = path.as_bytes();
        for chunk in [8192i64, 12345, 131072] {
            let mut pairs = vec![(read(sql::READ_PLAIN, &[&raw, &chunk]), read(sql::READ_HOLES, &[&raw, &chunk]))];
            for (off, len) in [(0i64, 16384i64), (100, 5000), (8192, 70000), (3 * 8192, 0), (1 << 30, 8192)] {
                pairs.push((
                    read(sql::READ_PLAIN_RANGE, &[&raw, &chunk, &off, &len]),
                    read(sql::READ_HOLES_RANGE, &[&raw, &chunk, &off, &len]),
                ));
            }
            for (k, (plain, holes)) in pairs.into_iter().enumerate() {
                assert_eq!(plain.len(), holes.len(), "{path}, chunk {chunk}, read {k}: rows");
                for (p, h) in plain.iter().zip(&holes) {
                    assert_eq!((p.0, p.1), (h.0, h.1), "{path}, chunk {chunk}, read {k}: size and mtime");
                    let rebuilt = h.2.as_ref().map(|d| {
                        let mut out = Vec::new();
                        pgbb::page_holes::fill(d, u64::MAX, &mut out).unwrap();
                        saved += out.len() - d.len().min(out.len());
                        out
                    });
                    assert!(p.2 == rebuilt, "{path}, chunk {chunk}, read {k}: the bytes differ");
                }
            }
        }
    }
    assert!(saved > 100 << 10, "holes were left out: {saved} bytes");
}
