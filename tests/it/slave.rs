//! The by-hand worker interface: `pgbb --slave --stdin DSN DEST` with a file list on stdin.

use crate::harness::*;

#[test]
fn by_hand_slave_copies_exactly_and_refuses_escapes() {
    let c = Cluster::new();
    let mut cl = c.client();
    cl.batch_execute(
        "CREATE TABLE s AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 20000) g; CHECKPOINT",
    )
    .unwrap();
    let rel: String = cl.query_one("SELECT pg_relation_filepath('s')", &[]).unwrap().get(0);
    let dest = c.path("byhand");
    let outside = c.path("outside-marker");
    let before: Vec<_> = std::fs::read_dir(c.tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    let input = format!("PG_VERSION\npg_hba.conf\n{rel}\n../x\n/etc/passwd\n\nnot/there\nPG_VERSION\n");
    let res = run_slave(&c, &dest, input.as_bytes(), &["--compress", "none"]);
    let (out, err, status) = (stdout(&res), stderr(&res), res.status);
    assert!(status.success(), "slave failed: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("hello\tpgbb\t4\t"), "{out}");
    assert!(lines[1].starts_with("ok\t") && lines[1].contains("\tPG_VERSION\t"), "{out}");
    assert!(lines[2].starts_with("ok\t") && lines[2].contains("\tpg_hba.conf\t"), "{out}");
    let fields: Vec<&str> = lines[3].split('\t').collect();
    let size = std::fs::metadata(c.data.join(&rel)).unwrap().len();
    assert_eq!(fields[..3], ["ok", size.to_string().as_str(), rel.as_str()], "{out}");
    // The default manifest checksum: CRC-32C of the bytes, little-endian hex.
    let crc = crc32c::crc32c(&std::fs::read(c.data.join(&rel)).unwrap());
    assert_eq!(fields[3], crc.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>(), "{out}");
    assert!(lines[4].starts_with("error\t../x\t"), "{out}");
    assert!(lines[5].starts_with("error\t/etc/passwd\t"), "{out}");
    assert!(lines[6].starts_with("error\t\t"), "empty line: {out}");
    assert_eq!(lines[7], "vanished\tnot/there");
    assert!(lines[8].starts_with("ok\t"), "duplicate path is simply copied again: {out}");
    assert_eq!(lines.len(), 9, "{out}");
    for f in ["PG_VERSION", "pg_hba.conf", rel.as_str()] {
        assert_eq!(std::fs::read(dest.join(f)).unwrap(), std::fs::read(c.data.join(f)).unwrap(), "{f} differs");
    }
    // Nothing written anywhere else: DEST holds exactly those files, the temp dir has
    // gained only DEST.
    let mut written: Vec<String> = walk(&dest);
    written.sort();
    let mut want = vec!["PG_VERSION".to_string(), "pg_hba.conf".to_string(), rel.clone()];
    want.sort();
    assert_eq!(written, want);
    let after: Vec<_> = std::fs::read_dir(c.tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(after.len(), before.len() + 1);
    assert!(!outside.exists() && !c.tmp.path().join("x").exists());
    c.assert_no_pgbb_left();
}

pub fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn slave_tab_form_writes_to_another_name() {
    let c = Cluster::new();
    let dest = c.path("renamed");
    let res = run_slave(&c, &dest, b"PG_VERSION\tcopies/version\n", &[]);
    let (out, err, status) = (stdout(&res), stderr(&res), res.status);
    assert!(status.success(), "{err}");
    assert!(out.contains("ok\t"), "{out}");
    assert_eq!(std::fs::read(dest.join("copies/version")).unwrap(), std::fs::read(c.data.join("PG_VERSION")).unwrap());
}

#[test]
fn slave_survives_hostile_lines() {
    let c = Cluster::new();
    let dest = c.path("hostile");
    let long = "a/".repeat(5000);
    let mut input: Vec<u8> = Vec::new();
    input.extend_from_slice(b"PG\0_VERSION\n"); // a raw NUL
    input.extend_from_slice(b"PG\\x00_VERSION\n"); // an escaped NUL
    input.extend_from_slice(long.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(b"bad\\escape\n");
    input.extend_from_slice(b"a\tb\tc\n");
    input.extend_from_slice(b"../../../../tmp/evil\tPG_VERSION\n"); // unsafe source
    input.extend_from_slice(b"PG_VERSION\t../../evil\n"); // unsafe target
    input.extend_from_slice(b"PG_VERSION\n");
    let out = run_slave(&c, &dest, &input, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 9, "{text}");
    for (i, want) in
        ["NUL", "NUL", "longer than", "bad escape", "wrong number of fields", "..", ".."].iter().enumerate()
    {
        assert!(lines[i + 1].starts_with("error\t") && lines[i + 1].contains(want), "line {}: {text}", i + 1);
    }
    assert!(lines[8].starts_with("ok\t"), "{text}");
    assert_eq!(walk(&dest), vec!["PG_VERSION".to_string()]);
    assert!(!c.tmp.path().join("evil").exists() && !std::path::Path::new("/tmp/evil").exists());
}

/// An error line names the request as the caller wrote it: bytes that are not UTF-8 come
/// back as `\xHH` (docs/protocol.md), not as replacement characters.
#[test]
fn slave_error_lines_escape_undecodable_bytes() {
    let c = Cluster::new();
    let dest = c.path("undecodable");
    let out = run_slave(&c, &dest, b"caf\xe9\tx\xff\xfey\nPG_VERSION\n", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[1].starts_with("error\tcaf\\xe9\\tx\\xff\\xfey\t"), "{text}");
    assert!(!lines[1].contains('\u{fffd}'), "{text}");
    assert!(lines[2].starts_with("ok\t"), "{text}");
}

/// A range request writes at most what the file holds at that range: cut at the file's size
/// (a 3-byte file gives 3 bytes, not the 100 MB asked for), nothing past its end.
#[test]
fn slave_range_requests_stop_at_the_end_of_the_file() {
    let c = Cluster::new();
    c.client().batch_execute("CREATE EXTENSION plpython3u").unwrap();
    let version = std::fs::read(c.data.join("PG_VERSION")).unwrap();
    let n = version.len() as u64;
    for compress in ["none", "zlib"] {
        let dest = c.path(&format!("ranges-{compress}"));
        let input = format!(
            "PG_VERSION\ta\t0\t104857600\nPG_VERSION\tb\t1\t{}\nPG_VERSION\tc\t{n}\t5\nPG_VERSION\td\t1000\t1\n",
            n + 10
        );
        let out = run_slave(&c, &dest, input.as_bytes(), &["--compress", compress]);
        assert!(out.status.success(), "{compress}: {}", stderr(&out));
        let text = stdout(&out);
        let sizes: Vec<&str> = text.lines().skip(1).map(|l| l.split('\t').nth(1).unwrap_or("?")).collect();
        assert_eq!(sizes, [n.to_string(), (n - 1).to_string(), "0".into(), "0".into()], "{compress}: {text}");
        let read = |name: &str| std::fs::read(dest.join(format!("{name}.pgbb-tmp"))).unwrap_or_default();
        assert_eq!(read("a"), version, "{compress}");
        // A piece is written at its offset into the temporary file: a hole before it.
        assert_eq!(read("b")[1..], version[1..], "{compress}");
        assert_eq!(read("b").len() as u64, n, "{compress}");
        for name in ["c", "d"] {
            assert!(read(name).len() as u64 <= n, "{compress}: {name} grew past the end of the file");
        }
        // The piece's checksum is of the bytes written.
        let crc = crc32c::crc32c(&version);
        let sum: String = crc.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(text.lines().nth(1).unwrap().split('\t').nth(3), Some(sum.as_str()), "{compress}: {text}");
    }
}

/// DEST made by a worker (or `-x`) run by hand is private like a backup's: 0700, or 0750
/// with --group-access.
#[test]
fn by_hand_dest_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::new();
    for (extra, want) in [(&[][..], 0o700), (&["--group-access"][..], 0o750)] {
        let dest = c.path(&format!("private-{want:o}")).join("sub");
        let out = run_slave(&c, &dest, b"PG_VERSION\n", extra);
        assert!(out.status.success(), "{}", stderr(&out));
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "DEST mode with {extra:?}");
        let parent = std::fs::metadata(dest.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(parent & 0o007, 0, "a parent created for DEST is open to others: {parent:o}");
    }
}

/// A worker that cannot create DEST says so as a `fatal` line (so that a master reports the
/// DEST problem, not a child that died without a word) and exits 5, the DEST code.
#[test]
fn by_hand_worker_that_cannot_create_dest_exits_5() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::new();
    let parent = c.path("locked");
    std::fs::create_dir(&parent).unwrap();
    let dest = parent.join("dest");
    // Root writes anywhere: the worker runs as postgres under a root-owned parent.
    let mut cmd = if is_root() {
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = std::process::Command::new("runuser");
        cmd.args(["-u", "postgres", "--", pgbb_bin()]);
        cmd
    } else {
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o555)).unwrap();
        std::process::Command::new(pgbb_bin())
    };
    let out =
        cmd.args(["--slave", "--stdin"]).arg(c.dsn()).arg(&dest).stdin(std::process::Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.starts_with("fatal\tcannot create destination ") && said.contains("Permission denied"), "{said}");
    assert!(stderr(&out).contains("cannot create destination"), "{}", stderr(&out));
    assert!(!dest.exists());
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
}
