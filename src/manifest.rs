//! `backup_manifest` in PostgreSQL's exact byte layout (version 1 on 13–16, version 2 with
//! `System-Identifier` on 17+), so that `pg_verifybackup` accepts it.

use crate::digest::{Algorithm, Checksum};
use crate::lsn::Lsn;
use sha2::Digest as _;

/// One regular file of the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to DEST, as raw bytes (names need not be UTF-8).
    pub path: Vec<u8>,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    pub algorithm: Algorithm,
    /// `None` with `Algorithm::None`.
    pub checksum: Option<Checksum>,
}

/// A WAL range the backup needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start: Lsn,
    pub end: Lsn,
}

/// JSON string escaping as PostgreSQL's `escape_json`.
fn escape_json(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `%Y-%m-%d %H:%M:%S GMT` of a Unix time (civil-from-days, no time-zone database needed).
pub fn gmt(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} GMT", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Renders the whole manifest, Manifest-Checksum included.
pub fn render(system_identifier: Option<u64>, files: &[FileEntry], wal: &[WalRange]) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write(&mut out, system_identifier, files, wal);
    out
}

/// Writes the manifest to `w` a file entry at a time (the master's memory does not grow with
/// a second copy of the file list), hashing the bytes for the Manifest-Checksum as they go.
pub fn write(
    w: &mut impl std::io::Write,
    system_identifier: Option<u64>,
    files: &[FileEntry],
    wal: &[WalRange],
) -> std::io::Result<()> {
    let mut sha = sha2::Sha256::new();
    let mut s = String::with_capacity(4096);
    let mut flush = |s: &mut String, w: &mut dyn std::io::Write| -> std::io::Result<()> {
        sha.update(s.as_bytes());
        w.write_all(s.as_bytes())?;
        s.clear();
        Ok(())
    };
    match system_identifier {
        Some(id) => s.push_str(&format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {id},\n\"Files\": ["
        )),
        None => s.push_str("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": ["),
    }
    for (i, f) in files.iter().enumerate() {
        s.push_str(if i == 0 { "\n" } else { ",\n" });
        match std::str::from_utf8(&f.path) {
            Ok(p) => {
                s.push_str("{ \"Path\": ");
                escape_json(p, &mut s);
                s.push_str(", ");
            }
            Err(_) => s.push_str(&format!("{{ \"Encoded-Path\": \"{}\", ", hex::encode(&f.path))),
        }
        s.push_str(&format!("\"Size\": {}, \"Last-Modified\": \"{}\"", f.size, gmt(f.mtime)));
        if let (Some(sum), a) = (&f.checksum, f.algorithm) {
            if a != Algorithm::None {
                s.push_str(&format!(", \"Checksum-Algorithm\": \"{a}\", \"Checksum\": \"{sum}\""));
            }
        }
        s.push_str(" }");
        if s.len() >= 4000 {
            flush(&mut s, w)?;
        }
    }
    s.push_str("\n],\n\"WAL-Ranges\": [\n");
    for (i, r) in wal.iter().enumerate() {
        if i > 0 {
            s.push_str(",\n");
        }
        s.push_str(&format!(
            "{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}",
            r.timeline, r.start, r.end
        ));
    }
    s.push_str("\n],\n");
    flush(&mut s, w)?;
    let sum = sha.finalize();
    writeln!(w, "\"Manifest-Checksum\": \"{}\"}}", hex::encode(sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmt_dates() {
        assert_eq!(gmt(0), "1970-01-01 00:00:00 GMT");
        assert_eq!(gmt(1_764_077_306), "2025-11-25 13:28:26 GMT");
        assert_eq!(gmt(951_782_400), "2000-02-29 00:00:00 GMT");
    }

    #[test]
    fn byte_layout_and_manifest_checksum() {
        let files = vec![
            FileEntry {
                path: b"backup_label".to_vec(),
                size: 3,
                mtime: 0,
                algorithm: Algorithm::Crc32c,
                checksum: Some(Checksum::Crc32c(crc32c::crc32c(b"15\n"))),
            },
            FileEntry { path: b"a\"b\\c".to_vec(), size: 0, mtime: 60, algorithm: Algorithm::None, checksum: None },
            FileEntry {
                path: b"bad\xffname".to_vec(),
                size: 1,
                mtime: 0,
                algorithm: Algorithm::Crc32c,
                checksum: Some(Checksum::Crc32c(0)),
            },
        ];
        let wal = [WalRange { timeline: 1, start: Lsn(0x5000028), end: Lsn(0x5000100) }];
        let m = String::from_utf8(render(None, &files, &wal)).unwrap();
        let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n\
{ \"Path\": \"backup_label\", \"Size\": 3, \"Last-Modified\": \"1970-01-01 00:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"8a744722\" },\n\
{ \"Path\": \"a\\\"b\\\\c\", \"Size\": 0, \"Last-Modified\": \"1970-01-01 00:01:00 GMT\" },\n\
{ \"Encoded-Path\": \"626164ff6e616d65\", \"Size\": 1, \"Last-Modified\": \"1970-01-01 00:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"00000000\" }\n\
],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/5000028\", \"End-LSN\": \"0/5000100\" }\n],\n";
        assert!(m.starts_with(body), "{m}");
        let tail = &m[body.len()..];
        let want = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        assert_eq!(tail, format!("\"Manifest-Checksum\": \"{want}\"}}\n"));
        assert_eq!(want.len(), 64);
        let v2 = String::from_utf8(render(Some(7712084942259703383), &[], &wal)).unwrap();
        assert!(v2.starts_with("{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7712084942259703383,\n\"Files\": [\n],\n"), "{v2}");
    }
}
