//! Tablespaces in a plain-format backup, as pg_basebackup does it: each tablespace's
//! `PG_<major>_<catversion>` directory is copied to its location — or to the one `-T OLD=NEW`
//! maps it to — and `pg_tblspc/<oid>` in DEST becomes a symlink there. No tablespace_map is
//! written (the symlinks are the map).

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// One `-T OLDDIR=NEWDIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub old: PathBuf,
    pub new: PathBuf,
}

/// Parses `OLDDIR=NEWDIR`; a `=` inside a path is written `\=`. Both must be absolute. The
/// paths are bytes, as the server's locations are (they need not be UTF-8).
pub fn parse_mapping(arg: &std::ffi::OsStr) -> Result<Mapping, String> {
    use std::os::unix::ffi::OsStrExt;
    let (mut old, mut new) = (Vec::new(), Vec::new());
    let mut seen_eq = false;
    let mut bytes = arg.as_bytes().iter().copied().peekable();
    let shown = arg.to_string_lossy();
    while let Some(b) = bytes.next() {
        let target = if seen_eq { &mut new } else { &mut old };
        match b {
            b'\\' if bytes.peek() == Some(&b'=') => {
                target.push(b'=');
                bytes.next();
            }
            b'=' if !seen_eq => seen_eq = true,
            b'=' => {
                return Err(format!("multiple \"=\" signs in tablespace mapping {shown:?} (escape = in a path as \\=)"))
            }
            b => target.push(b),
        }
    }
    if !seen_eq {
        return Err(format!("invalid tablespace mapping format {shown:?}, must be \"OLDDIR=NEWDIR\""));
    }
    let path = |v: Vec<u8>| PathBuf::from(std::ffi::OsString::from_vec(v));
    let (old, new) = (path(old), path(new));
    if !old.is_absolute() || !new.is_absolute() {
        return Err(format!("both directories of tablespace mapping {shown:?} must be absolute paths"));
    }
    Ok(Mapping { old, new })
}

/// A tablespace to back up.
#[derive(Debug, Clone)]
pub struct Tablespace {
    pub oid: u32,
    pub name: String,
    /// Where it is on the server.
    pub location: PathBuf,
    /// Where its copy goes.
    pub target: PathBuf,
}

/// Decides where each tablespace goes, and checks that every target can be used: it must not
/// exist, or be an empty directory (writing into the server's own live tablespace location
/// would destroy it) — unless `refresh` (`--delta`), which checks each target against DEST
/// later ([`check_refresh_target`]). Locations are the server's bytes, in any encoding.
pub fn plan(spcs: &[(u32, String, PathBuf)], mappings: &[Mapping], refresh: bool) -> Result<Vec<Tablespace>, Error> {
    for m in mappings {
        if !spcs.iter().any(|(_, _, loc)| *loc == m.old) {
            return Err(Error::Usage(format!(
                "-T {}: no tablespace is at {} (locations: {})",
                m.old.display(),
                m.old.display(),
                spcs.iter().map(|(_, _, l)| l.display().to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let mut out = Vec::new();
    for (oid, name, location) in spcs.iter().filter(|(_, _, loc)| loc.is_absolute()) {
        let target = mappings.iter().find(|m| m.old == *location).map_or(location.clone(), |m| m.new.clone());
        let t = Tablespace { oid: *oid, name: name.clone(), location: location.clone(), target };
        if !refresh {
            check_empty(&t)?;
        }
        out.push(t);
    }
    Ok(out)
}

fn in_the_way(t: &Tablespace) -> Error {
    Error::Dest(crate::dest::DestError::TablespaceInTheWay {
        name: t.name.clone(),
        target: t.target.clone(),
        location: t.location.clone(),
    })
}

/// A target must be missing or an empty directory.
pub fn check_empty(t: &Tablespace) -> Result<(), Error> {
    if std::fs::read_dir(&t.target).map(|mut d| d.next().is_some()).unwrap_or(false) {
        return Err(in_the_way(t));
    }
    Ok(())
}

/// `--delta` on an older copy in `dest`: a target that is not empty is the copy's own
/// tablespace only if the copy's `pg_tblspc/<oid>` link points there; anything else is
/// refused, as for a full backup.
pub fn check_refresh_target(t: &Tablespace, dest: &Path) -> Result<(), Error> {
    // The copy's own pg_tblspc, not one a symlink leads to.
    if !std::fs::symlink_metadata(dest.join("pg_tblspc")).is_ok_and(|m| m.is_dir()) {
        return check_empty(t);
    }
    let link = dest.join("pg_tblspc").join(t.oid.to_string());
    match std::fs::read_link(&link) {
        Ok(to) if to == t.target => Ok(()),
        _ => check_empty(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings() {
        let parse = |s: &str| parse_mapping(std::ffi::OsStr::new(s));
        assert_eq!(parse("/a=/b").unwrap(), Mapping { old: "/a".into(), new: "/b".into() });
        assert_eq!(parse("/a\\=x y=/b c").unwrap(), Mapping { old: "/a=x y".into(), new: "/b c".into() });
        assert!(parse("/a").is_err());
        assert!(parse("a=/b").is_err());
        assert!(parse("/a=/b=/c").is_err());
        use std::os::unix::ffi::OsStrExt;
        let odd = parse_mapping(std::ffi::OsStr::from_bytes(b"/sp\xff=/new")).unwrap();
        assert_eq!(odd.old.as_os_str().as_bytes(), b"/sp\xff");
    }

    #[test]
    fn targets_must_be_free() {
        let t = tempfile::tempdir().unwrap();
        let busy = t.path().join("busy");
        std::fs::create_dir(&busy).unwrap();
        std::fs::write(busy.join("x"), "").unwrap();
        let spcs = vec![(16400u32, "ts".to_string(), busy.clone())];
        assert!(plan(&spcs, &[], false).is_err(), "the live location is refused");
        let new = t.path().join("new");
        let p = plan(&spcs, &[Mapping { old: busy.clone(), new: new.clone() }], false).unwrap();
        assert_eq!(p[0].target, new);
        assert!(
            plan(&spcs, &[Mapping { old: "/elsewhere".into(), new }], false).is_err(),
            "a mapping must match a tablespace"
        );
        // In-place tablespaces (relative locations) are ordinary data.
        assert!(plan(&[(1, "inplace".into(), "pg_tblspc/1".into())], &[], false).unwrap().is_empty());
        // A location that is not UTF-8 is matched byte for byte.
        use std::os::unix::ffi::OsStrExt;
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/srv/sp\xffce"));
        let p =
            plan(&[(7, "odd".into(), odd.clone())], &[Mapping { old: odd, new: t.path().join("n") }], false).unwrap();
        assert_eq!(p[0].target, t.path().join("n"));
    }
}
