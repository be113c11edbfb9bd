//! The earlier backup's `backup_manifest` (`-i OLD_MANIFEST`): read, its checksum verified,
//! and what an incremental backup needs from it (system identifier, WAL ranges, paths).
//!
//! The rules are PostgreSQL's (src/common/parse_manifest.c, as the server and pg_combinebackup
//! use it): the version is the first field, `Manifest-Checksum` the last, and the SHA-256 of
//! the file up to and including its penultimate newline must equal it. Version 1 (PostgreSQL
//! 13-16) cannot start an incremental chain.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use sha2::Digest as _;

use super::format::incremental_path;
use crate::digest::Algorithm;
use crate::lsn::Lsn;

/// One entry of the manifest's `WAL-Ranges`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start: Lsn,
    pub end: Lsn,
}

/// What an incremental backup needs from the earlier backup's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldManifest {
    /// `PostgreSQL-Backup-Manifest-Version` (only 2 is accepted by [`parse`]).
    pub version: u32,
    /// `System-Identifier` (v2; `None` when the field is absent).
    pub system_identifier: Option<u64>,
    /// `WAL-Ranges`, as listed.
    pub wal_ranges: Vec<WalRange>,
    /// Every file's path (`Path`, or `Encoded-Path` decoded), as raw bytes.
    pub paths: HashSet<Vec<u8>>,
}

/// What to do instead, said at the end of the messages about a damaged file.
const USE_OWN: &str = "use the backup_manifest written with the earlier backup, unchanged";

/// Why an OLD_MANIFEST cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OldManifestError {
    #[error("cannot read OLD_MANIFEST {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("OLD_MANIFEST {} is a directory: give the earlier backup's manifest file, {}", path.display(), path.join("backup_manifest").display())]
    IsDirectory { path: PathBuf },
    #[error("OLD_MANIFEST is empty: {USE_OWN}")]
    Empty,
    #[error("OLD_MANIFEST is not a backup manifest, it is not JSON ({0}): give the earlier backup's backup_manifest")]
    NotJson(#[source] serde_json::Error),
    #[error("OLD_MANIFEST ends early ({0}), it was cut short: {USE_OWN}")]
    Truncated(#[source] serde_json::Error),
    #[error("OLD_MANIFEST is not a valid backup manifest: {0}; {USE_OWN}")]
    Invalid(#[source] serde_json::Error),
    #[error("OLD_MANIFEST is not a valid backup manifest: {0}; {USE_OWN}")]
    Malformed(String),
    #[error("OLD_MANIFEST is not a valid backup manifest: entry {index} of \"Files\": {detail}; {USE_OWN}")]
    BadFile { index: usize, detail: String },
    #[error("OLD_MANIFEST is not a valid backup manifest: duplicate path name in backup manifest: {0:?}; {USE_OWN}")]
    DuplicatePath(String),
    #[error(
        "backup manifest version 1 does not support incremental backup: OLD_MANIFEST is from a backup \
         of PostgreSQL 16 or older; an incremental backup starts from a backup of this server taken \
         on PostgreSQL 17 or later (by pg_basebackup or pgbb): take a full backup first"
    )]
    Version1,
    #[error(
        "OLD_MANIFEST has backup manifest version {0}; pgbb knows versions 1 and 2 (an incremental backup needs 2)"
    )]
    UnknownVersion(u64),
    #[error(
        "OLD_MANIFEST is corrupt: its Manifest-Checksum {claimed} does not match the SHA-256 of its \
         contents, {actual} (the file was changed or damaged after the backup); {USE_OWN}, or take a \
         full backup"
    )]
    Checksum { claimed: String, actual: String },
    #[error(
        "manifest contains no required WAL ranges: OLD_MANIFEST lists no \"WAL-Ranges\", so where the \
         earlier backup started is unknown; {USE_OWN}"
    )]
    NoWalRanges,
    #[error("OLD_MANIFEST has a bad WAL range (entry {index} of \"WAL-Ranges\"): {detail}; {USE_OWN}")]
    BadWalRange { index: usize, detail: String },
    #[error(
        "OLD_MANIFEST is from another cluster: system identifier in backup manifest is {manifest}, but \
         database system identifier is {server}; give the manifest of an earlier backup of this \
         server, or take a full backup"
    )]
    SystemMismatch { manifest: u64, server: u64 },
    #[error(
        "OLD_MANIFEST has no System-Identifier (the database system identifier is {server}), so \
         pg_combinebackup could not combine its backup with a newer one; use a manifest written by \
         PostgreSQL 17 or later tools or by pgbb, or take a full backup"
    )]
    NoSystemIdentifier { server: u64 },
}

type E = OldManifestError;

/// Reads and checks the manifest at `path`.
pub fn read(path: &Path) -> Result<OldManifest, OldManifestError> {
    match std::fs::read(path) {
        Ok(bytes) => parse(&bytes),
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => Err(E::IsDirectory { path: path.to_path_buf() }),
        Err(source) => Err(E::Read { path: path.to_path_buf(), source }),
    }
}

/// Parses and checks manifest bytes.
pub fn parse(bytes: &[u8]) -> Result<OldManifest, OldManifestError> {
    if bytes.is_empty() {
        return Err(E::Empty);
    }
    let version = Cell::new(None);
    let raw = decode(bytes, &version);
    // The version comes first in the file, so it is known even when what follows is wrong;
    // a manifest of another version is answered as such, whatever else is in it.
    match version.get() {
        Some(1) => return Err(E::Version1),
        Some(v) if v != 2 => return Err(E::UnknownVersion(v)),
        _ => {}
    }
    let raw = raw?;
    verify_checksum(bytes, raw.checksum.as_deref())?;
    let files = raw.files.ok_or_else(|| E::Malformed("it has no \"Files\" list".into()))?;
    let paths = collect_paths(files)?;
    let wal_ranges = collect_ranges(raw.wal_ranges.unwrap_or_default())?;
    Ok(OldManifest { version: 2, system_identifier: raw.system_identifier, wal_ranges, paths })
}

/// The `WAL-Ranges` of a manifest of either version (`delta::trust`: PostgreSQL 13–16 write
/// version 1), its checksum verified.
pub fn wal_ranges(bytes: &[u8]) -> Result<Vec<WalRange>, OldManifestError> {
    let version = Cell::new(None);
    let raw = decode(bytes, &version);
    if let Some(v) = version.get().filter(|v| !matches!(v, 1 | 2)) {
        return Err(E::UnknownVersion(v));
    }
    let raw = raw?;
    verify_checksum(bytes, raw.checksum.as_deref())?;
    collect_ranges(raw.wal_ranges.unwrap_or_default())
}

impl OldManifest {
    /// True when the earlier backup has `path`, whole or as `INCREMENTAL.<name>`.
    pub fn has(&self, path: &[u8]) -> bool {
        self.paths.contains(path) || self.paths.contains(&incremental_path(path))
    }

    /// Checks that the manifest is of the cluster whose `pg_control` says `server` (what the
    /// server checks, and what pg_combinebackup needs: it refuses a manifest without one).
    pub fn check_system(&self, server: u64) -> Result<(), OldManifestError> {
        match self.system_identifier {
            Some(manifest) if manifest == server => Ok(()),
            Some(manifest) => Err(E::SystemMismatch { manifest, server }),
            None => Err(E::NoSystemIdentifier { server }),
        }
    }

    /// The range the earlier backup started in: the lowest start LSN (on a tie, the lowest
    /// timeline). Its timeline and start are the `INCREMENTAL FROM TLI/LSN` of the label.
    /// PostgreSQL orders the ranges by the server's timeline history; along one history
    /// timelines and LSNs grow together, so it is the same range once every timeline has been
    /// found in that history. `None` only for a manifest not built by [`parse`].
    pub fn earliest(&self) -> Option<&WalRange> {
        self.wal_ranges.iter().min_by_key(|r| (r.start, r.timeline))
    }

    /// The range the earlier backup ended in: the highest end LSN (on a tie, the highest
    /// timeline). This backup must start at or after its end.
    pub fn latest(&self) -> Option<&WalRange> {
        self.wal_ranges.iter().max_by_key(|r| (r.end, r.timeline))
    }
}

/// The manifest as JSON, before its meaning is checked.
#[derive(Default)]
struct Raw {
    system_identifier: Option<u64>,
    files: Option<Vec<RawFile>>,
    wal_ranges: Option<Vec<RawRange>>,
    checksum: Option<String>,
}

/// One entry of `Files`. Checksums and times are checked for form and not kept.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path", default, deserialize_with = "encoded_path")]
    encoded_path: Option<Vec<u8>>,
    #[serde(rename = "Size")]
    size: Option<u64>,
    #[serde(rename = "Last-Modified")]
    _last_modified: Option<IgnoredAny>,
    #[serde(rename = "Checksum-Algorithm", default, deserialize_with = "algorithm")]
    algorithm: Option<Algorithm>,
    #[serde(rename = "Checksum", default, deserialize_with = "checksum")]
    checksum: Option<()>,
}

/// One entry of `WAL-Ranges`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    #[serde(rename = "Timeline")]
    timeline: Option<u64>,
    #[serde(rename = "Start-LSN")]
    start: Option<String>,
    #[serde(rename = "End-LSN")]
    end: Option<String>,
}

const VERSION_FIELD: &str = "PostgreSQL-Backup-Manifest-Version";

/// Runs the JSON parser; the version, once read, is left in `version`.
fn decode(bytes: &[u8], version: &Cell<Option<u64>>) -> Result<Raw, OldManifestError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let raw = TopLevel(version).deserialize(&mut de).and_then(|raw| de.end().map(|()| raw));
    raw.map_err(|e| match e.classify() {
        serde_json::error::Category::Eof => E::Truncated(e),
        serde_json::error::Category::Syntax => E::NotJson(e),
        _ => E::Invalid(e),
    })
}

/// The top-level object, read field by field so that the order PostgreSQL requires is kept:
/// the version first, the checksum last, no field twice, none unknown.
struct TopLevel<'c>(&'c Cell<Option<u64>>);

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Raw;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a backup manifest (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        match map.next_key::<String>()? {
            Some(k) if k == VERSION_FIELD => self.0.set(Some(map.next_value()?)),
            Some(k) => {
                return Err(de::Error::custom(format!("the first field is {k:?}, expected \"{VERSION_FIELD}\"")))
            }
            None => return Err(de::Error::custom(format!("empty object, expected \"{VERSION_FIELD}\""))),
        }
        let mut raw = Raw::default();
        while let Some(key) = map.next_key::<String>()? {
            if raw.checksum.is_some() {
                return Err(de::Error::custom(format!(
                    "field {key:?} after \"Manifest-Checksum\", which must be last"
                )));
            }
            match key.as_str() {
                "System-Identifier" => once(&mut raw.system_identifier, map.next_value()?, &key)?,
                "Files" => once(&mut raw.files, map.next_value()?, &key)?,
                "WAL-Ranges" => once(&mut raw.wal_ranges, map.next_value()?, &key)?,
                "Manifest-Checksum" => once(&mut raw.checksum, map.next_value()?, &key)?,
                VERSION_FIELD => return Err(de::Error::custom(format!("duplicate field \"{VERSION_FIELD}\""))),
                _ => return Err(de::Error::custom(format!("unrecognized top-level field {key:?}"))),
            }
        }
        Ok(raw)
    }
}

fn once<T, Er: de::Error>(slot: &mut Option<T>, value: T, key: &str) -> Result<(), Er> {
    if slot.is_some() {
        return Err(Er::custom(format!("duplicate field {key:?}")));
    }
    *slot = Some(value);
    Ok(())
}

/// A JSON string read without keeping it; `check` says what is wrong with it, if anything.
struct CheckedStr<F>(&'static str, F);

impl<F: FnOnce(&str) -> Result<T, String>, T> Visitor<'_> for CheckedStr<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<Er: de::Error>(self, s: &str) -> Result<T, Er> {
        (self.1)(s).map_err(Er::custom)
    }
}

/// `Encoded-Path`: hex of the name's raw bytes (PostgreSQL writes it for names not in UTF-8).
fn encoded_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    let decode = |s: &str| hex::decode(s).map_err(|_| format!("could not decode file name {s:?}"));
    d.deserialize_str(CheckedStr("a hex-encoded file name", decode)).map(Some)
}

/// `Checksum-Algorithm`: one PostgreSQL knows (any case, as `pg_checksum_parse_type`).
fn algorithm<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Algorithm>, D::Error> {
    let parse = |s: &str| s.parse::<Algorithm>().map_err(|_| format!("unrecognized checksum algorithm: {s:?}"));
    d.deserialize_str(CheckedStr("a checksum algorithm", parse)).map(Some)
}

/// `Checksum`: hex digits, an even number of them (or none).
fn checksum<'de, D: Deserializer<'de>>(d: D) -> Result<Option<()>, D::Error> {
    let check = |s: &str| match hex::decode(s) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("invalid checksum {s:?}")),
    };
    d.deserialize_str(CheckedStr("a hex checksum", check)).map(Some)
}

/// PostgreSQL's `verify_manifest_checksum`: the file ends with a newline and has at least two
/// lines; the SHA-256 of everything up to and including the penultimate newline equals the
/// `Manifest-Checksum`, 64 hex digits of either case.
fn verify_checksum(bytes: &[u8], claimed: Option<&str>) -> Result<(), OldManifestError> {
    let Some((&b'\n', before_last)) = bytes.split_last() else {
        return Err(E::Malformed("its last line does not end with a newline (was it cut short?)".into()));
    };
    let Some(penultimate) = before_last.iter().rposition(|&b| b == b'\n') else {
        return Err(E::Malformed("expected at least 2 lines".into()));
    };
    let claimed = claimed.ok_or_else(|| E::Malformed("it has no \"Manifest-Checksum\"".into()))?;
    let want = match hex::decode(claimed) {
        Ok(w) if w.len() == 32 => w,
        _ => return Err(E::Malformed(format!("invalid manifest checksum: {claimed:?}"))),
    };
    let actual = sha2::Sha256::digest(&bytes[..=penultimate]);
    if actual.as_slice() != want.as_slice() {
        return Err(E::Checksum { claimed: claimed.to_string(), actual: hex::encode(actual) });
    }
    Ok(())
}

/// Every file's path as raw bytes; each entry must have a path of one kind and a size.
fn collect_paths(files: Vec<RawFile>) -> Result<HashSet<Vec<u8>>, OldManifestError> {
    let mut paths = HashSet::with_capacity(files.len());
    for (i, f) in files.into_iter().enumerate() {
        let bad = |detail: &str| E::BadFile { index: i + 1, detail: detail.to_string() };
        let path = match (f.path, f.encoded_path) {
            (Some(p), None) => p.into_bytes(),
            (None, Some(p)) => p,
            (None, None) => return Err(bad("missing path name")),
            (Some(_), Some(_)) => return Err(bad("both path name and encoded path name")),
        };
        if f.size.is_none() {
            return Err(bad("missing size"));
        }
        if f.algorithm.is_none() && f.checksum.is_some() {
            return Err(bad("checksum without algorithm"));
        }
        if path.is_empty() || path.contains(&0) {
            return Err(bad("the path is empty or contains a NUL byte"));
        }
        if paths.contains(&path) {
            return Err(E::DuplicatePath(String::from_utf8_lossy(&path).into_owned()));
        }
        paths.insert(path);
    }
    Ok(paths)
}

/// The WAL ranges: at least one, each with a timeline ID and start <= end.
fn collect_ranges(raw: Vec<RawRange>) -> Result<Vec<WalRange>, OldManifestError> {
    if raw.is_empty() {
        return Err(E::NoWalRanges);
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| wal_range(r).map_err(|detail| E::BadWalRange { index: i + 1, detail }))
        .collect()
}

fn wal_range(r: RawRange) -> Result<WalRange, String> {
    let t = r.timeline.ok_or("missing \"Timeline\"")?;
    let timeline = u32::try_from(t).ok().filter(|&t| t > 0).ok_or(format!("timeline {t} is not a timeline ID"))?;
    let lsn = |s: Option<String>, what: &str| -> Result<Lsn, String> {
        let s = s.ok_or(format!("missing \"{what}\""))?;
        s.parse().map_err(|_| format!("{what} {s:?} is not a WAL location"))
    };
    let start = lsn(r.start, "Start-LSN")?;
    let end = lsn(r.end, "End-LSN")?;
    if start > end {
        return Err(format!("Start-LSN {start} is after End-LSN {end}"));
    }
    Ok(WalRange { timeline, start, end })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Checksum;
    use crate::manifest::{self, FileEntry};
    use proptest::prelude::*;
    use std::io::Read as _;

    /// System identifier of the cluster the PostgreSQL 17 fixtures were taken from.
    const PG17_SYSID: u64 = 7712844377932928378;

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut out).unwrap();
        out
    }

    /// pg_basebackup 17 of a fresh initdb with two extra files in the data directory,
    /// `quote"back\slash` and `weird<0xff>name` (so `Encoded-Path`).
    fn pg17_full() -> Vec<u8> {
        gunzip(include_bytes!("../../tests/fixtures/pg17-full-backup_manifest.gz"))
    }

    /// pg_basebackup 17 --incremental on top of [`pg17_full`], after a table was created.
    fn pg17_incr() -> Vec<u8> {
        gunzip(include_bytes!("../../tests/fixtures/pg17-incr-backup_manifest.gz"))
    }

    /// pg_basebackup 16 of a fresh initdb: a version 1 manifest.
    fn pg16_full() -> Vec<u8> {
        gunzip(include_bytes!("../../tests/fixtures/pg16-full-backup_manifest.gz"))
    }

    /// `body` (everything before the checksum line) with the checksum line PostgreSQL adds.
    fn seal(body: &str) -> Vec<u8> {
        let sum = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n").into_bytes()
    }

    const HEAD: &str = "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 42,\n";
    const FILE: &str = "{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2026-01-01 00:00:00 GMT\" }";
    const RANGES: &str =
        "\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000120\" }\n],\n";

    /// A sealed v2 manifest with the given file entries and WAL-Ranges text.
    fn with(files: &[&str], ranges: &str) -> Vec<u8> {
        seal(&format!("{HEAD}\"Files\": [\n{}\n],\n{ranges}", files.join(",\n")))
    }

    fn err(bytes: &[u8]) -> OldManifestError {
        parse(bytes).expect_err("should be refused")
    }

    fn file(path: &[u8]) -> FileEntry {
        FileEntry {
            path: path.to_vec(),
            size: 8192,
            mtime: 1_764_077_306,
            algorithm: Algorithm::Crc32c,
            checksum: Some(Checksum::Crc32c(7)),
        }
    }

    #[test]
    fn pg_basebackup_17_manifest() {
        let m = parse(&pg17_full()).unwrap();
        assert_eq!(m.version, 2);
        assert_eq!(m.system_identifier, Some(PG17_SYSID));
        let range = WalRange { timeline: 1, start: Lsn(0x2000028), end: Lsn(0x2000120) };
        assert_eq!(m.wal_ranges, vec![range]);
        assert_eq!((m.earliest(), m.latest()), (Some(&range), Some(&range)));
        assert_eq!(m.paths.len(), 968);
        assert!(m.has(b"global/pg_control") && m.has(b"PG_VERSION") && m.has(b"base/5/2753_fsm"));
        assert!(m.has(b"quote\"back\\slash"), "JSON escapes decoded");
        assert!(m.has(b"weird\xffname"), "Encoded-Path decoded");
        assert!(!m.has(b"base/5/999999") && !m.has(b"global"));
        m.check_system(PG17_SYSID).unwrap();
        let e = m.check_system(1).unwrap_err().to_string();
        assert!(e.contains("is 7712844377932928378, but database system identifier is 1"), "{e}");
    }

    #[test]
    fn pg_basebackup_17_incremental_manifest() {
        let m = parse(&pg17_incr()).unwrap();
        assert_eq!(m.wal_ranges, vec![WalRange { timeline: 1, start: Lsn(0x4000028), end: Lsn(0x4000120) }]);
        // Listed only as INCREMENTAL.1261: an incremental on top of it finds it all the same.
        assert!(!m.paths.contains(&b"global/1261"[..]) && m.paths.contains(&b"global/INCREMENTAL.1261"[..]));
        assert!(m.has(b"global/1261"));
        assert!(m.has(b"base/5/2753_fsm"), "FSM forks are sent whole");
        assert!(m.has(b"weird\xffname"));
    }

    #[test]
    fn has_finds_incremental_names() {
        let m = OldManifest {
            version: 2,
            system_identifier: Some(1),
            wal_ranges: vec![],
            paths: [&b"base/5/INCREMENTAL.16384.1"[..], b"INCREMENTAL.x", b"global/1262"]
                .iter()
                .map(|p| p.to_vec())
                .collect(),
        };
        assert!(m.has(b"base/5/16384.1") && m.has(b"x") && m.has(b"global/1262"));
        assert!(!m.has(b"base/5/16384") && !m.has(b"base/5/INCREMENTAL.16384") && !m.has(b"global/INCREMENTAL.1262"));
        assert_eq!((m.earliest(), m.latest()), (None, None));
    }

    #[test]
    fn pgbb_written_manifest() {
        let files = [file(b"backup_label"), file(b"base/1/INCREMENTAL.1259"), file(b"a\"b\\c\n"), file(b"bad\xffname")];
        let wal = [
            manifest::WalRange { timeline: 2, start: Lsn(0x1_0000_0060), end: Lsn(0x1_0200_0000) },
            manifest::WalRange { timeline: 1, start: Lsn(0xFF00_0028), end: Lsn(0x1_0000_0060) },
        ];
        let m = parse(&manifest::render(Some(u64::MAX), &files, &wal)).unwrap();
        assert_eq!(m.system_identifier, Some(u64::MAX));
        let want: HashSet<Vec<u8>> = files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(m.paths, want);
        assert!(m.has(b"base/1/1259"));
        assert_eq!(m.earliest().map(|r| (r.timeline, r.start)), Some((1, Lsn(0xFF00_0028))));
        assert_eq!(m.latest().map(|r| (r.timeline, r.end)), Some((2, Lsn(0x1_0200_0000))));
        let e = m.check_system(5).unwrap_err();
        assert!(matches!(e, E::SystemMismatch { manifest: u64::MAX, server: 5 }), "{e}");
    }

    #[test]
    fn version_1_is_refused() {
        let e = err(&pg16_full());
        assert!(matches!(e, E::Version1), "{e}");
        assert!(e.to_string().starts_with("backup manifest version 1 does not support incremental backup"), "{e}");
        assert!(e.to_string().contains("PostgreSQL 17 or later"), "{e}");
        // What pgbb writes on 13-16, even with a wrong checksum: the version is what to fix.
        let mut v1 = manifest::render(None, &[file(b"x")], &[]);
        let at = v1.len() - 5;
        v1[at] ^= 1;
        assert!(matches!(err(&v1), E::Version1));
    }

    #[test]
    fn other_versions_and_version_not_first() {
        let v3 = seal("{ \"PostgreSQL-Backup-Manifest-Version\": 3,\n\"Files\": [],\n");
        assert!(matches!(err(&v3), E::UnknownVersion(3)));
        // A version 3 with fields pgbb does not know is still reported by its version.
        let v3 = seal("{ \"PostgreSQL-Backup-Manifest-Version\": 3,\n\"New-Field\": 1,\n");
        assert!(matches!(err(&v3), E::UnknownVersion(3)));
        let late = seal("{ \"System-Identifier\": 42,\n\"PostgreSQL-Backup-Manifest-Version\": 2,\n");
        let e = err(&late);
        assert!(
            matches!(e, E::Invalid(_)) && e.to_string().contains("the first field is \"System-Identifier\""),
            "{e}"
        );
        for bad in ["\"2\"", "2.0", "-2", "null"] {
            let m = seal(&format!("{{ \"PostgreSQL-Backup-Manifest-Version\": {bad},\n\"Files\": [],\n{RANGES}"));
            assert!(matches!(err(&m), E::Invalid(_)), "{bad}");
        }
        assert!(matches!(err(b"{}\n\n"), E::Invalid(_)));
    }

    #[test]
    fn tampered_byte_fails_the_checksum() {
        let good = pg17_full();
        let text = std::str::from_utf8(&good).unwrap();
        let at_sum = text.rfind("\"Manifest-Checksum\": \"").unwrap() + 22;
        let sum = &text[at_sum..at_sum + 64];
        assert_eq!(sum, sum.to_ascii_lowercase(), "PostgreSQL writes lower case");
        // backup_label's size, 225 -> 226: still JSON, still a manifest, but not the one sealed.
        let mut bad = good.clone();
        let at = text.find("\"Size\": 225").unwrap() + 10;
        bad[at] = b'6';
        let e = err(&bad);
        let msg = e.to_string();
        assert!(matches!(e, E::Checksum { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!("OLD_MANIFEST is corrupt: its Manifest-Checksum {sum} does not match")),
            "{msg}"
        );
        assert!(msg.contains(USE_OWN), "{msg}");
        // A changed digit in the checksum itself.
        let mut bad = good.clone();
        bad[at_sum] = if bad[at_sum] == b'0' { b'1' } else { b'0' };
        assert!(matches!(err(&bad), E::Checksum { .. }));
        // The checksum's hex is read in either case, as PostgreSQL does.
        let upper = text.replace(sum, &sum.to_ascii_uppercase());
        assert_ne!(upper, text);
        assert_eq!(parse(upper.as_bytes()).unwrap(), parse(&good).unwrap());
    }

    #[test]
    fn checksum_line_rules() {
        let good = with(&[FILE], RANGES);
        parse(&good).unwrap();
        // Without its last newline: cut short.
        let e = err(&good[..good.len() - 1]);
        assert!(matches!(&e, E::Malformed(m) if m.contains("newline")), "{e}");
        // One line only.
        let one = String::from_utf8(good.clone()).unwrap().replace('\n', " ");
        assert!(matches!(err(format!("{}\n", one.trim_end()).as_bytes()), E::Malformed(m) if m.contains("2 lines")));
        // Missing, short, or not hex.
        let none = format!("{HEAD}\"Files\": [\n],\n{}", RANGES.trim_end_matches(",\n")) + "}\n";
        assert!(matches!(err(none.as_bytes()), E::Malformed(m) if m.contains("no \"Manifest-Checksum\"")));
        for sum in ["abc", &"g".repeat(64)] {
            let m = format!("{HEAD}\"Files\": [\n],\n{RANGES}\"Manifest-Checksum\": \"{sum}\"}}\n");
            assert!(matches!(err(m.as_bytes()), E::Malformed(m) if m.contains("invalid manifest checksum")), "{sum}");
        }
        // Not the last field.
        let late = format!("{HEAD}\"Manifest-Checksum\": \"00\",\n\"Files\": []}}\n");
        assert!(err(late.as_bytes()).to_string().contains("after \"Manifest-Checksum\""));
    }

    #[test]
    fn truncated_anywhere_is_refused() {
        let good = pg17_incr();
        let cuts = (1..good.len()).step_by(997).chain(good.len() - 200..good.len());
        for cut in cuts {
            let e = err(&good[..cut]);
            assert!(matches!(e, E::Truncated(_) | E::Malformed(_)), "cut at {cut}: {e}");
        }
        let e = err(&good[..good.len() / 2]);
        assert!(
            matches!(e, E::Truncated(_)) && e.to_string().starts_with("OLD_MANIFEST ends early (EOF while parsing"),
            "{e}"
        );
    }

    #[test]
    fn not_a_manifest() {
        assert!(matches!(err(b""), E::Empty));
        let label = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n";
        let e = err(label);
        assert!(matches!(e, E::NotJson(_)) && e.to_string().contains("not JSON"), "{e}");
        assert!(matches!(err(b"\x1f\x8b\x08\x00"), E::NotJson(_)));
        assert!(matches!(err(b"[1, 2]\n\n"), E::Invalid(_)));
        let mut trailing = with(&[FILE], RANGES);
        trailing.extend_from_slice(b"{}\n");
        assert!(matches!(err(&trailing), E::NotJson(_)));
        let unknown = seal(&format!("{HEAD}\"Files\": [],\n{RANGES}\"Extra\": 1,\n"));
        assert!(err(&unknown).to_string().contains("unrecognized top-level field \"Extra\""));
        let twice = seal(&format!("{HEAD}\"Files\": [],\n\"Files\": [],\n{RANGES}"));
        assert!(err(&twice).to_string().contains("duplicate field \"Files\""));
        let no_files = seal(&format!("{HEAD}{RANGES}"));
        assert!(matches!(err(&no_files), E::Malformed(m) if m.contains("\"Files\"")));
    }

    #[test]
    fn wal_ranges_required_and_checked() {
        for ranges in ["", "\"WAL-Ranges\": [\n],\n"] {
            let e = err(&with(&[FILE], ranges));
            assert!(matches!(e, E::NoWalRanges), "{e}");
            assert!(e.to_string().starts_with("manifest contains no required WAL ranges"), "{e}");
        }
        let bad = |t: &str, s: &str, e: &str| {
            let r = format!(
                "\"WAL-Ranges\": [\n{{ \"Timeline\": {t}, \"Start-LSN\": \"{s}\", \"End-LSN\": \"{e}\" }}\n],\n"
            );
            err(&with(&[FILE], &r))
        };
        let ok = ("1", "0/2000028", "0/2000120");
        for (t, s, e, says) in [
            ("0", ok.1, ok.2, "timeline 0 is not a timeline ID"),
            ("4294967296", ok.1, ok.2, "not a timeline ID"),
            (ok.0, "0/2000028x", ok.2, "Start-LSN \"0/2000028x\" is not a WAL location"),
            (ok.0, ok.1, "2000120", "End-LSN \"2000120\" is not a WAL location"),
            (ok.0, "0/3000000", ok.2, "Start-LSN 0/3000000 is after End-LSN 0/2000120"),
        ] {
            let err = bad(t, s, e);
            assert!(matches!(&err, E::BadWalRange { index: 1, detail } if detail.contains(says)), "{err}");
        }
        assert!(matches!(bad("-1", ok.1, ok.2), E::Invalid(_)));
        assert!(matches!(bad("\"1\"", ok.1, ok.2), E::Invalid(_)));
        let missing = "\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/1\" }\n],\n";
        assert!(matches!(err(&with(&[FILE], missing)), E::BadWalRange { detail, .. } if detail.contains("End-LSN")));
        let extra =
            "\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/1\", \"End-LSN\": \"0/1\", \"X\": 1 }\n],\n";
        assert!(matches!(err(&with(&[FILE], extra)), E::Invalid(_)));
    }

    #[test]
    fn duplicate_paths_are_refused() {
        let wal = [manifest::WalRange { timeline: 1, start: Lsn(1), end: Lsn(2) }];
        let e = err(&manifest::render(Some(1), &[file(b"a/b"), file(b"c"), file(b"a/b")], &wal));
        assert!(matches!(&e, E::DuplicatePath(p) if p == "a/b"), "{e}");
        assert!(e.to_string().contains("duplicate path name in backup manifest: \"a/b\""), "{e}");
        // The same bytes written once as Path and once as Encoded-Path.
        let enc = "{ \"Encoded-Path\": \"50475f56455253494f4e\", \"Size\": 3 }";
        assert!(matches!(err(&with(&[FILE, enc], RANGES)), E::DuplicatePath(p) if p == "PG_VERSION"));
    }

    #[test]
    fn file_entries_checked_as_postgres_does() {
        for (entry, says) in [
            ("{ \"Size\": 3 }", "missing path name"),
            ("{ \"Path\": \"a\", \"Encoded-Path\": \"61\", \"Size\": 3 }", "both path name"),
            ("{ \"Path\": \"a\" }", "missing size"),
            ("{ \"Path\": \"a\", \"Size\": 1, \"Checksum\": \"00\" }", "checksum without algorithm"),
            ("{ \"Path\": \"a\\u0000b\", \"Size\": 1 }", "NUL"),
            ("{ \"Encoded-Path\": \"\", \"Size\": 1 }", "empty"),
        ] {
            let e = err(&with(&[FILE, entry], RANGES));
            assert!(matches!(&e, E::BadFile { index: 2, detail } if detail.contains(says)), "{entry}: {e}");
        }
        for (entry, says) in [
            ("{ \"Encoded-Path\": \"6\", \"Size\": 1 }", "could not decode file name \"6\""),
            ("{ \"Encoded-Path\": \"zz\", \"Size\": 1 }", "could not decode file name"),
            (
                "{ \"Path\": \"a\", \"Size\": 1, \"Checksum-Algorithm\": \"MD5\" }",
                "unrecognized checksum algorithm: \"MD5\"",
            ),
            (
                "{ \"Path\": \"a\", \"Size\": 1, \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"abc\" }",
                "invalid checksum",
            ),
            ("{ \"Path\": \"a\", \"Size\": -1 }", "invalid value"),
            ("{ \"Path\": \"a\", \"Size\": 1, \"Mode\": 1 }", "unknown field `Mode`"),
            ("{ \"Path\": 5, \"Size\": 1 }", "invalid type"),
        ] {
            let e = err(&with(&[FILE, entry], RANGES));
            assert!(matches!(e, E::Invalid(_)) && e.to_string().contains(says), "{entry}: {e}");
        }
        // What PostgreSQL accepts: any case of algorithm name, an empty checksum, NONE.
        let fine = [
            "{ \"Path\": \"a\", \"Size\": 1, \"Checksum-Algorithm\": \"sha256\", \"Checksum\": \"AB\" }",
            "{ \"Path\": \"b\", \"Size\": 1, \"Checksum-Algorithm\": \"NONE\", \"Checksum\": \"\" }",
            "{ \"Encoded-Path\": \"63FF\", \"Size\": 1 }",
        ];
        let m = parse(&with(&fine, RANGES)).unwrap();
        assert!(m.has(b"a") && m.has(b"b") && m.has(b"c\xff"));
    }

    #[test]
    fn no_system_identifier() {
        let body = format!("{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"Files\": [\n{FILE}\n],\n{RANGES}");
        let m = parse(&seal(&body)).unwrap();
        assert_eq!(m.system_identifier, None);
        let e = m.check_system(9).unwrap_err();
        assert!(matches!(e, E::NoSystemIdentifier { server: 9 }), "{e}");
        assert!(e.to_string().contains("pg_combinebackup"), "{e}");
    }

    #[test]
    fn read_names_the_path_and_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = read(&missing).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, E::Read { .. }), "{msg}");
        assert!(msg.contains(&missing.display().to_string()) && msg.contains("No such file or directory"), "{msg}");
        let e = read(dir.path()).unwrap_err();
        assert!(matches!(e, E::IsDirectory { .. }) && e.to_string().ends_with("/backup_manifest"), "{e}");
        let good = dir.path().join("backup_manifest");
        std::fs::write(&good, pg17_full()).unwrap();
        assert_eq!(read(&good).unwrap(), parse(&pg17_full()).unwrap());
    }

    proptest! {
        /// Any set of names (UTF-8 with escapes, or raw bytes) survives pgbb's writer and this
        /// reader byte for byte; the identifier and ranges too.
        #[test]
        fn round_trip(
            names in proptest::collection::hash_set(proptest::collection::vec(1u8..=255, 1..24), 1..40),
            sysid: u64,
            tli in 1u32..,
            start: u64,
            len in 0u64..1 << 40,
        ) {
            let files: Vec<FileEntry> = names.iter().map(|n| file(n)).collect();
            let end = start.saturating_add(len);
            let wal = [manifest::WalRange { timeline: tli, start: Lsn(start), end: Lsn(end) }];
            let m = parse(&manifest::render(Some(sysid), &files, &wal)).unwrap();
            prop_assert_eq!(&m.paths, &names.iter().cloned().collect::<HashSet<_>>());
            prop_assert_eq!(m.system_identifier, Some(sysid));
            prop_assert_eq!(m.wal_ranges, vec![WalRange { timeline: tli, start: Lsn(start), end: Lsn(end) }]);
        }

        /// Whatever bytes come in, parse answers without panicking.
        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }
    }
}
