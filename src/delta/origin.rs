//! Proof that DEST holds a copy of the cluster pgbb is connected to, before `--delta` changes
//! anything in it: the database system identifier in its `global/pg_control`, its
//! `backup_manifest`, or the record ([`MARKER`]) every run writes into DEST before its first
//! change; the major version in `PG_VERSION`; no server running on it; owned by this user.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Written into DEST by every run before it changes anything else, removed just before the
/// backup is made complete: what an interrupted run leaves to prove its origin.
pub const MARKER: &str = "pgbb_origin";

/// What DEST must be a copy of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cluster {
    pub system_identifier: u64,
    pub major: i32,
    pub catalog_version: i32,
}

impl Cluster {
    /// The marker's contents.
    pub fn record(&self) -> String {
        format!(
            "pgbb: a backup in progress, or interrupted (finish it with pgbb --delta)\n\
             system_identifier={}\nmajor={}\ncatalog_version={}\n",
            self.system_identifier, self.major, self.catalog_version
        )
    }
}

/// What DEST turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Absent or empty: a full backup.
    Empty,
    /// A copy of this cluster; the evidence, for the log.
    Copy(Vec<&'static str>),
}

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("{} is a copy of another cluster: its {by} says database system identifier {found}, the server's is {want}; --delta refuses to change it (choose another DEST)", dest.display())]
    Foreign { dest: PathBuf, by: &'static str, found: u64, want: u64 },
    #[error("{} holds files of PostgreSQL {found} (its {by}); the server is PostgreSQL {want}; --delta refuses to change it (choose another DEST)", dest.display())]
    OtherMajor { dest: PathBuf, by: &'static str, found: String, want: String },
    #[error("a PostgreSQL server is running on {} (its postmaster.pid names process {pid}); stop it (pg_ctl -D {} stop) before refreshing it", dest.display(), dest.display())]
    Running { dest: PathBuf, pid: i32 },
    #[error("{} is owned by user id {owner}, not by the user pgbb runs as ({me}); run pgbb as its owner (the user the copy's server runs as)", dest.display())]
    Owner { dest: PathBuf, owner: u32, me: u32 },
    #[error("nothing in {} proves which cluster it is a copy of (no global/pg_control, backup_manifest with a system identifier, or {MARKER}); --delta refuses to change it: choose another DEST, or -f without --delta to replace it", dest.display())]
    Unproven { dest: PathBuf },
    #[error("{} cannot be refreshed by this user: {} cannot be read and written (fix their owner or mode, or run pgbb as the copy's owner); nothing was changed", dest.display(), files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Unusable { dest: PathBuf, files: Vec<PathBuf> },
    #[error("{} in {}: {why}; --delta refuses to change it", file, dest.display())]
    Unreadable { dest: PathBuf, file: &'static str, why: String },
}

/// Checks DEST against `want`; changes nothing.
pub fn prove(dest: &Path, want: Cluster) -> Result<Found, OriginError> {
    let meta = match fs::metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Empty),
        Err(e) => return Err(unreadable(dest, ".", e)),
        Ok(m) => m,
    };
    let empty = fs::read_dir(dest).map_err(|e| unreadable(dest, ".", e))?.next().is_none();
    if meta.is_dir() && empty {
        return Ok(Found::Empty);
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(OriginError::Owner { dest: dest.into(), owner: meta.uid(), me });
    }
    if let Some(pid) = running_postmaster(dest) {
        return Err(OriginError::Running { dest: dest.into(), pid });
    }
    let mut by = Vec::new();
    for (what, found) in [
        ("global/pg_control", from_pg_control(dest, want)?),
        ("backup_manifest", from_manifest(dest)?),
        (MARKER, from_marker(dest, want)?),
    ] {
        let Some(found) = found else { continue };
        if found != want.system_identifier {
            return Err(OriginError::Foreign { dest: dest.into(), by: what, found, want: want.system_identifier });
        }
        by.push(what);
    }
    if by.is_empty() {
        return Err(OriginError::Unproven { dest: dest.into() });
    }
    if let Some(v) = read_opt(dest, "PG_VERSION")? {
        let found = String::from_utf8_lossy(&v).trim().to_string();
        if found != want.major.to_string() {
            let want = want.major.to_string();
            return Err(OriginError::OtherMajor { dest: dest.into(), by: "PG_VERSION", found, want });
        }
    }
    Ok(Found::Copy(by))
}

fn unreadable(dest: &Path, file: &'static str, e: io::Error) -> OriginError {
    OriginError::Unreadable { dest: dest.into(), file, why: e.to_string() }
}

/// A file of DEST's, `None` when it is not there. Never through a symlink, the directories on
/// the way included.
pub(crate) fn read_opt(dest: &Path, name: &'static str) -> Result<Option<Vec<u8>>, OriginError> {
    let p = dest.join(name);
    for dir in Path::new(name).ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()) {
        match fs::symlink_metadata(dest.join(dir)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unreadable(dest, name, e)),
            Ok(m) if !m.is_dir() => {
                let why = format!("{} is not a directory of DEST's own (a symbolic link?)", dir.display());
                return Err(unreadable(dest, name, io::Error::other(why)));
            }
            Ok(_) => {}
        }
    }
    match fs::symlink_metadata(&p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(dest, name, e)),
        Ok(m) if !m.file_type().is_file() => {
            return Err(unreadable(dest, name, io::Error::other("not a regular file")));
        }
        Ok(_) => {}
    }
    fs::read(&p).map(Some).map_err(|e| unreadable(dest, name, e))
}

/// The process a postmaster.pid in DEST names, if it is alive.
fn running_postmaster(dest: &Path) -> Option<i32> {
    let text = fs::read_to_string(dest.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => Some(pid),
        Err(_) => None,
    }
}

/// The system identifier in `global/pg_control` (its first 8 bytes, in this machine's byte
/// order); its catalog version must be the server's.
fn from_pg_control(dest: &Path, want: Cluster) -> Result<Option<u64>, OriginError> {
    // A run that stopped after removing its record, before putting pg_control in place,
    // left it under its pending name.
    let b = match read_opt(dest, "global/pg_control")? {
        Some(b) => b,
        None => match read_opt(dest, "global/pg_control.pgbb-pending")? {
            Some(b) => b,
            None => return Ok(None),
        },
    };
    let (Some(id), Some(cat)) = (b.get(..8), b.get(12..16)) else {
        return Err(unreadable(dest, "global/pg_control", io::Error::other("too short")));
    };
    let id = u64::from_ne_bytes(id.try_into().unwrap_or_default());
    let cat = i32::from_ne_bytes(cat.try_into().unwrap_or_default());
    if id == want.system_identifier && cat != want.catalog_version {
        return Err(OriginError::OtherMajor {
            dest: dest.into(),
            by: "global/pg_control",
            found: format!("with catalog version {cat}"),
            want: format!("{} (catalog version {})", want.major, want.catalog_version),
        });
    }
    Ok(Some(id))
}

/// `"System-Identifier": N` in `backup_manifest` (manifests of PostgreSQL 17 on).
fn from_manifest(dest: &Path) -> Result<Option<u64>, OriginError> {
    let Some(b) = read_opt(dest, "backup_manifest")? else { return Ok(None) };
    Ok(number_after(&b, b"\"System-Identifier\":"))
}

fn from_marker(dest: &Path, want: Cluster) -> Result<Option<u64>, OriginError> {
    let Some(b) = read_opt(dest, MARKER)? else { return Ok(None) };
    let text = String::from_utf8_lossy(&b);
    let field = |k: &str| marker_field(&text, k).map(str::to_string);
    if let Some(major) = field("major").filter(|m| *m != want.major.to_string()) {
        return Err(OriginError::OtherMajor {
            dest: dest.into(),
            by: MARKER,
            found: major,
            want: want.major.to_string(),
        });
    }
    field("system_identifier")
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| unreadable(dest, MARKER, io::Error::other("no system_identifier in it")))
}

/// The value of the marker's line `key=value` (trimmed), if it has one.
pub(crate) fn marker_field<'a>(marker: &'a str, key: &str) -> Option<&'a str> {
    marker.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::trim)
}

/// The decimal number that follows `key` (and blanks) in `text`.
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &text[at..];
    let digits: Vec<u8> =
        rest.iter().skip_while(|b| b.is_ascii_whitespace()).take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Cluster = Cluster { system_identifier: 7_312_345_678_901_234_567, major: 15, catalog_version: 202209061 };

    fn pg_control(id: u64, cat: i32) -> Vec<u8> {
        let mut b = id.to_ne_bytes().to_vec();
        b.extend_from_slice(&1300u32.to_ne_bytes());
        b.extend_from_slice(&cat.to_ne_bytes());
        b.resize(8192, 0);
        b
    }

    fn dest_with(files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, data) in files {
            let p = d.path().join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        }
        d
    }

    #[test]
    fn a_copy_of_this_cluster_is_proven_by_any_of_its_records() {
        let d = dest_with(&[
            ("global/pg_control", pg_control(ME.system_identifier, ME.catalog_version)),
            ("PG_VERSION", b"15\n".to_vec()),
        ]);
        assert_eq!(prove(d.path(), ME).unwrap(), Found::Copy(vec!["global/pg_control"]));
        let manifest = format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {},\n",
            ME.system_identifier
        );
        let d = dest_with(&[("backup_manifest", manifest.into_bytes())]);
        assert_eq!(prove(d.path(), ME).unwrap(), Found::Copy(vec!["backup_manifest"]));
        let d = dest_with(&[(MARKER, ME.record().into_bytes())]);
        assert_eq!(prove(d.path(), ME).unwrap(), Found::Copy(vec![MARKER]));
        assert_eq!(prove(&d.path().join("absent"), ME).unwrap(), Found::Empty);
        assert_eq!(prove(dest_with(&[]).path(), ME).unwrap(), Found::Empty);
    }

    #[test]
    fn another_cluster_another_major_or_no_proof_is_refused() {
        let other = Cluster { system_identifier: 42, ..ME };
        let d = dest_with(&[("global/pg_control", pg_control(42, ME.catalog_version))]);
        assert!(matches!(prove(d.path(), ME), Err(OriginError::Foreign { found: 42, .. })));
        // The marker agrees, pg_control does not: refused.
        let d = dest_with(&[(MARKER, ME.record().into_bytes()), ("global/pg_control", pg_control(42, 1))]);
        assert!(matches!(prove(d.path(), ME), Err(OriginError::Foreign { .. })));
        let d = dest_with(&[(MARKER, other.record().into_bytes())]);
        assert!(matches!(prove(d.path(), ME), Err(OriginError::Foreign { .. })));
        let d =
            dest_with(&[("global/pg_control", pg_control(ME.system_identifier, 1)), ("PG_VERSION", b"15\n".to_vec())]);
        assert!(matches!(prove(d.path(), ME), Err(OriginError::OtherMajor { .. })));
        let d = dest_with(&[(MARKER, ME.record().into_bytes()), ("PG_VERSION", b"14\n".to_vec())]);
        assert!(matches!(prove(d.path(), ME), Err(OriginError::OtherMajor { .. })));
        let d = dest_with(&[("base/1/1259", vec![0; 8192])]);
        assert!(matches!(prove(d.path(), ME), Err(OriginError::Unproven { .. })));
    }

    /// `global` a symlink to another cluster's: nothing is read through it; a pg_control
    /// left under its pending name (a run stopped just before completing) proves the origin.
    #[test]
    fn nothing_is_read_through_a_link_and_a_pending_pg_control_counts() {
        let other = dest_with(&[("global/pg_control", pg_control(ME.system_identifier, ME.catalog_version))]);
        let d = dest_with(&[("PG_VERSION", b"15\n".to_vec())]);
        std::os::unix::fs::symlink(other.path().join("global"), d.path().join("global")).unwrap();
        assert!(matches!(prove(d.path(), ME), Err(OriginError::Unreadable { .. })));
        let d = dest_with(&[("global/pg_control.pgbb-pending", pg_control(ME.system_identifier, ME.catalog_version))]);
        assert_eq!(prove(d.path(), ME).unwrap(), Found::Copy(vec!["global/pg_control"]));
    }

    #[test]
    fn a_live_postmaster_pid_is_refused_a_stale_one_is_not() {
        let rec = ME.record().into_bytes();
        let live = format!("{}\n/data\n", std::process::id()).into_bytes();
        let d = dest_with(&[(MARKER, rec.clone()), ("postmaster.pid", live)]);
        assert!(matches!(prove(d.path(), ME), Err(OriginError::Running { .. })));
        let d = dest_with(&[(MARKER, rec), ("postmaster.pid", b"999999999\n/data\n".to_vec())]);
        assert!(prove(d.path(), ME).is_ok());
    }
}
