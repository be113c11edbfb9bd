//! What DEST holds, listed without following any symlink: each entry's path relative to
//! DEST (raw bytes) and its kind.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One entry of DEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A regular file, its size and number of hard links.
    File {
        size: u64,
        links: u64,
    },
    Dir,
    /// A symbolic link (never followed).
    Link,
    /// A FIFO, socket or device.
    Other,
}

/// Every entry below `root` (not `root` itself), parents before their children; not what
/// is below `pg_wal` (the WAL child writes there meanwhile, and a refresh clears it first).
/// An entry removed while it is listed is left out.
pub fn list(root: &Path) -> io::Result<Vec<(Vec<u8>, Kind)>> {
    let mut out = Vec::new();
    walk(root, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// Entries of a listing of `root` that this user could not refresh: a file it cannot read and
/// write, a directory it cannot list and change (the first few, by path).
pub fn unusable(root: &Path, entries: &[(Vec<u8>, Kind)]) -> Vec<std::path::PathBuf> {
    use nix::unistd::{access, AccessFlags};
    use std::os::unix::ffi::OsStrExt;
    let rw = AccessFlags::R_OK | AccessFlags::W_OK;
    let mut bad = Vec::new();
    for (rel, kind) in entries {
        let p = root.join(std::ffi::OsStr::from_bytes(rel));
        let need = match kind {
            Kind::File { .. } => rw,
            Kind::Dir => rw | AccessFlags::X_OK,
            Kind::Link | Kind::Other => continue,
        };
        if access(&p, need).is_err() {
            bad.push(p);
            if bad.len() == 5 {
                break;
            }
        }
    }
    bad
}

fn walk(dir: &Path, rel: &mut Vec<u8>, out: &mut Vec<(Vec<u8>, Kind)>) -> io::Result<()> {
    let rd = fs::read_dir(dir).map_err(|e| io::Error::new(e.kind(), format!("cannot list {}: {e}", dir.display())))?;
    for entry in rd {
        let entry = entry?;
        let meta = match fs::symlink_metadata(entry.path()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot read {}: {e}", entry.path().display()))),
            Ok(m) => m,
        };
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            Kind::File { size: meta.len(), links: meta.nlink() }
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Link
        } else {
            Kind::Other
        };
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(entry.file_name().as_bytes());
        out.push((rel.clone(), kind));
        if kind == Kind::Dir && rel.as_slice() != b"pg_wal" {
            walk(&entry.path(), rel, out)?;
        }
        rel.truncate(len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::fs::create_dir_all(d.path().join("base/5")).unwrap();
        std::fs::write(d.path().join("base/5/1259"), vec![0u8; 8192]).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("base/out")).unwrap();
        std::fs::create_dir_all(d.path().join("pg_wal/archive_status")).unwrap();
        let mut got = list(d.path()).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                (b"base".to_vec(), Kind::Dir),
                (b"base/5".to_vec(), Kind::Dir),
                (b"base/5/1259".to_vec(), Kind::File { size: 8192, links: 1 }),
                (b"base/out".to_vec(), Kind::Link),
                (b"pg_wal".to_vec(), Kind::Dir),
            ]
        );
    }
}
