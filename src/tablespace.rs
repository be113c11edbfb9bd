//! Tablespaces in a plain-format backup, as pg_basebackup does it: each tablespace's
//! `PG_<major>_<catversion>` directory is copied to its location — or to the one `-T OLD=NEW`
//! maps it to — and `pg_tblspc/<oid>` in DEST becomes a symlink there. No tablespace_map is
//! written (the symlinks are the map).

use std::path::{Path, PathBuf};

use crate::error::Error;

/// One `-T OLDDIR=NEWDIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub old: PathBuf,
    pub new: PathBuf,
}

/// Parses `OLDDIR=NEWDIR`; a `=` inside a path is written `\=`. Both must be absolute.
pub fn parse_mapping(s: &str) -> Result<Mapping, String> {
    let mut old = String::new();
    let mut new = String::new();
    let mut seen_eq = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let target = if seen_eq { &mut new } else { &mut old };
        match c {
            '\\' if chars.peek() == Some(&'=') => {
                target.push('=');
                chars.next();
            }
            '=' if !seen_eq => seen_eq = true,
            '=' => return Err(format!("multiple \"=\" signs in tablespace mapping {s:?} (escape = in a path as \\=)")),
            c => target.push(c),
        }
    }
    if !seen_eq {
        return Err(format!("invalid tablespace mapping format {s:?}, must be \"OLDDIR=NEWDIR\""));
    }
    let (old, new) = (PathBuf::from(old), PathBuf::from(new));
    if !old.is_absolute() || !new.is_absolute() {
        return Err(format!("both directories of tablespace mapping {s:?} must be absolute paths"));
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
/// would destroy it).
pub fn plan(spcs: &[(u32, String, String)], mappings: &[Mapping]) -> Result<Vec<Tablespace>, Error> {
    for m in mappings {
        if !spcs.iter().any(|(_, _, loc)| Path::new(loc) == m.old) {
            return Err(Error::Usage(format!(
                "-T {}: no tablespace is at {} (locations: {})",
                m.old.display(),
                m.old.display(),
                spcs.iter().map(|(_, _, l)| l.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let mut out = Vec::new();
    for (oid, name, loc) in spcs.iter().filter(|(_, _, loc)| loc.starts_with('/')) {
        let location = PathBuf::from(loc);
        let target = mappings.iter().find(|m| m.old == location).map_or(location.clone(), |m| m.new.clone());
        if std::fs::read_dir(&target).map(|mut d| d.next().is_some()).unwrap_or(false) {
            return Err(Error::Dest(crate::dest::DestError::TablespaceInTheWay {
                name: name.clone(),
                target,
                location,
            }));
        }
        out.push(Tablespace { oid: *oid, name: name.clone(), location, target });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings() {
        assert_eq!(parse_mapping("/a=/b").unwrap(), Mapping { old: "/a".into(), new: "/b".into() });
        assert_eq!(parse_mapping("/a\\=x y=/b c").unwrap(), Mapping { old: "/a=x y".into(), new: "/b c".into() });
        assert!(parse_mapping("/a").is_err());
        assert!(parse_mapping("a=/b").is_err());
        assert!(parse_mapping("/a=/b=/c").is_err());
    }

    #[test]
    fn targets_must_be_free() {
        let t = tempfile::tempdir().unwrap();
        let busy = t.path().join("busy");
        std::fs::create_dir(&busy).unwrap();
        std::fs::write(busy.join("x"), "").unwrap();
        let spcs = vec![(16400u32, "ts".to_string(), busy.display().to_string())];
        assert!(plan(&spcs, &[]).is_err(), "the live location is refused");
        let new = t.path().join("new");
        let p = plan(&spcs, &[Mapping { old: busy.clone(), new: new.clone() }]).unwrap();
        assert_eq!(p[0].target, new);
        assert!(
            plan(&spcs, &[Mapping { old: "/elsewhere".into(), new }]).is_err(),
            "a mapping must match a tablespace"
        );
        // In-place tablespaces (relative locations) are ordinary data.
        assert!(plan(&[(1, "inplace".into(), "pg_tblspc/1".into())], &[]).unwrap().is_empty());
    }
}
