//! Listing the data directory. Through SQL, symlinks are invisible: `pg_ls_dir` and
//! `pg_stat_file` follow them, so the server's recursive listing descends into whatever a
//! link points to. When pgbb sees the server's live data directory (proven, see
//! [`crate::dest_safety`]), it lists it here instead, with lstat, as pg_basebackup does:
//! symlinks other than `pg_wal` and `pg_tblspc/<oid>`, and special files (FIFOs, sockets,
//! devices), are skipped with core's warning, so nothing is ever read through them. The files
//! themselves are still read by the server. Otherwise the SQL listing is used, and a symlink
//! loop in it becomes an error that names the link.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::dest_safety::ServerView;
use crate::error::Error;
use crate::layout::{EXCLUDED_DIR_CONTENTS, EXCLUDED_FILES, EXCLUDED_FILE_PREFIX, TEMP_PREFIX};
use crate::pg::{sql, PgError, Session};
use crate::protocol::show;

/// (raw path relative to the data directory, is a directory, size), as the SQL listing gives.
pub type Listing = Vec<(Vec<u8>, bool, u64)>;

pub fn list(s: &mut Session, view: &ServerView) -> Result<Listing, Error> {
    match &view.local_data_dir {
        Some(root) => list_local(root).map_err(|source| Error::LocalListing { root: root.clone(), source }),
        None => sql::list_data_directory(s).map_err(explain_loop),
    }
}

/// What one entry of the data directory is for the backup.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    File(u64),
    Dir {
        size: u64,
        descend: bool,
    },
    /// A symlink or special file: skipped with a warning.
    Special,
    /// Skipped silently (a name core excludes anyway, or gone).
    Ignored,
}

fn excluded_name(name: &[u8]) -> bool {
    let n = String::from_utf8_lossy(name);
    EXCLUDED_FILES.contains(&&*n) || n.starts_with(EXCLUDED_FILE_PREFIX) || n.starts_with(TEMP_PREFIX)
}

/// Core's rules (basebackup.c, sendDir) for one entry below directory `parent` ("" for the
/// top): `pg_wal` at the top and the excluded-content directories are directories whatever
/// they are (their contents are not listed); `pg_tblspc/<oid>` links are followed; any other
/// symlink and any special file is skipped.
fn classify(parent: &[u8], name: &[u8], full: &Path, md: &fs::Metadata) -> Kind {
    let n = String::from_utf8_lossy(name);
    let emptied = (parent.is_empty() && name == b"pg_wal") || EXCLUDED_DIR_CONTENTS.contains(&&*n);
    let ft = md.file_type();
    if ft.is_symlink() {
        if emptied {
            return Kind::Dir { size: 0, descend: false };
        }
        if parent == b"pg_tblspc" {
            return match fs::metadata(full) {
                Ok(m) if m.is_dir() => Kind::Dir { size: m.len(), descend: true },
                _ => Kind::Ignored,
            };
        }
    } else if ft.is_dir() {
        return Kind::Dir { size: md.len(), descend: !emptied && !n.starts_with(TEMP_PREFIX) };
    } else if ft.is_file() {
        return Kind::File(md.len());
    }
    if excluded_name(name) {
        Kind::Ignored
    } else {
        Kind::Special
    }
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

/// Lists `root` with lstat, by core's rules (see [`classify`]). Entries that vanish while it
/// runs are simply missing, as in the SQL listing.
fn list_local(root: &Path) -> io::Result<Listing> {
    let mut out = Vec::new();
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    while let Some(rel) = stack.pop() {
        let dir = root.join(OsStr::from_bytes(&rel));
        let entries = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        };
        for ent in entries {
            let ent = match ent {
                Ok(e) => e,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let name = ent.file_name();
            let path = join(&rel, name.as_bytes());
            // fstatat on the directory's descriptor, without a path walk from the root for
            // each entry (49k files: listed in 87 ms instead of 93).
            let md = match ent.metadata() {
                Ok(m) => m,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            match classify(&rel, name.as_bytes(), &ent.path(), &md) {
                Kind::File(size) => out.push((path, false, size)),
                Kind::Dir { size, descend } => {
                    out.push((path.clone(), true, size));
                    if descend {
                        stack.push(path);
                    }
                }
                Kind::Special => log::warn!("skipping special file \"./{}\"", show(&path)),
                Kind::Ignored => {}
            }
        }
    }
    Ok(out)
}

/// The server's listing failed on a symlink loop: name the link and the fix.
fn explain_loop(e: PgError) -> Error {
    let msg = e.to_string();
    if !msg.contains("Too many levels of symbolic links") {
        return e.into();
    }
    let path = msg.split('"').nth(1).unwrap_or_default();
    PgError::Unsupported(format!(
        "the data directory holds a symbolic link loop at \"{}\" (the server's listing followed it until \
         \"Too many levels of symbolic links\"): remove the link — pg_basebackup would skip it. Through SQL pgbb \
         cannot tell a link from what it points to; run it where it sees the server's data directory to have \
         links skipped",
        loop_start(path)
    ))
    .into()
}

/// The link of a path that went round a loop: the path without the repetitions at its end
/// (`base/loop/loop/loop` → `base/loop`, `a/b/x/b/x` → `a/b/x`).
fn loop_start(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    for p in 1..=n / 2 {
        if parts[n - p..] == parts[n - 2 * p..n - p] {
            let mut end = n;
            while end >= 2 * p && parts[end - p..end] == parts[end - 2 * p..end - p] {
                end -= p;
            }
            return parts[..end].join("/");
        }
    }
    path.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn loops_are_named_by_their_link() {
        let long = format!("base{}", "/loop".repeat(40));
        assert_eq!(loop_start(&long), "base/loop");
        assert_eq!(loop_start("a/b/x/b/x/b/x"), "a/b/x");
        assert_eq!(loop_start("base/5/self"), "base/5/self");
    }

    #[test]
    fn links_and_special_files_are_skipped_as_core_does() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "x").unwrap();
        let root = t.path();
        for d in ["base/5", "pg_tblspc", "pg_notify", "global"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("base/5/1259"), "12345").unwrap();
        fs::write(root.join("PG_VERSION"), "15\n").unwrap();
        let spc = tempfile::tempdir().unwrap();
        fs::create_dir_all(spc.path().join("PG_15_1/5")).unwrap();
        fs::write(spc.path().join("PG_15_1/5/16384"), "ab").unwrap();
        symlink(outside.path().join("secret"), spc.path().join("PG_15_1/5/link")).unwrap();
        symlink(spc.path(), root.join("pg_tblspc/16400")).unwrap();
        symlink(outside.path(), root.join("pg_wal")).unwrap();
        symlink(outside.path(), root.join("pg_replslot")).unwrap();
        symlink(outside.path().join("secret"), root.join("base/5/link")).unwrap();
        symlink(outside.path(), root.join("base/dirlink")).unwrap();
        symlink(".", root.join("base/loop")).unwrap();
        symlink(outside.path().join("secret"), root.join("postmaster.opts")).unwrap();
        nix::unistd::mkfifo(&root.join("global/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut got: Vec<(String, bool)> =
            list_local(root).unwrap().into_iter().map(|(p, d, _)| (String::from_utf8(p).unwrap(), d)).collect();
        got.sort();
        let want: Vec<(String, bool)> = [
            ("PG_VERSION", false),
            ("base", true),
            ("base/5", true),
            ("base/5/1259", false),
            ("global", true),
            ("pg_notify", true),
            ("pg_replslot", true),
            ("pg_tblspc", true),
            ("pg_tblspc/16400", true),
            ("pg_tblspc/16400/PG_15_1", true),
            ("pg_tblspc/16400/PG_15_1/5", true),
            ("pg_tblspc/16400/PG_15_1/5/16384", false),
            ("pg_wal", true),
        ]
        .iter()
        .map(|(p, d)| (p.to_string(), *d))
        .collect();
        assert_eq!(got, want);
        let md = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!(classify(b"base/5", b"link", &root.join("base/5/link"), &md("base/5/link")), Kind::Special);
        assert_eq!(classify(b"global", b"fifo", &root.join("global/fifo"), &md("global/fifo")), Kind::Special);
        assert_eq!(
            classify(b"", b"postmaster.opts", &root.join("postmaster.opts"), &md("postmaster.opts")),
            Kind::Ignored
        );
    }
}
