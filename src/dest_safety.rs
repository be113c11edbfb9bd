//! DEST safety: before anything is created or removed, DEST and every tablespace target are
//! checked against the server's own directories — its data directory, its tablespaces and
//! pg_wal's target — by device and inode (so a symlink or a bind mount does not hide them),
//! and against the `postmaster.pid` of a running server (which also catches a shared mount
//! seen from another host, where paths and device numbers say nothing).
//!
//! The directories are known only when pgbb can prove that it sees the server's live data
//! directory: its `postmaster.pid`, read here, has the bytes and the times the server reports
//! for its own (a copy of the directory would have another change time). The same proof
//! lets the listing see symlinks (see [`crate::listing`]).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::dest::DestError;
use crate::error::Error;
use crate::pg::sql_dest::{self, ServerFiles};
use crate::pg::Session;
use crate::tablespace::Tablespace;

/// What pgbb found out about where the server's files are.
#[derive(Debug, Clone, Default)]
pub struct ServerView {
    /// The server's live data directory, as this machine sees it (proven).
    pub local_data_dir: Option<PathBuf>,
}

/// One of the server's directories, never to be written into or emptied.
#[derive(Debug, Clone)]
struct Protected {
    what: String,
    path: PathBuf,
    id: (u64, u64),
}

fn id_of(p: &Path) -> Option<(u64, u64)> {
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Checks DEST (and with `force`, what it holds) and every tablespace target; returns what the
/// listing needs to know. Creates and removes nothing.
pub fn vet(s: &mut Session, dest: &Path, spcs: &[Tablespace], force: bool) -> Result<ServerView, Error> {
    let mut files = sql_dest::server_files(s)?;
    let mut local = prove_local(&files);
    if local.is_none() && claimed_dir(&files).is_some_and(|d| d.join("postmaster.pid").exists()) {
        // The status line of postmaster.pid may have changed between the two reads.
        files = sql_dest::server_files(s)?;
        local = prove_local(&files);
    }
    match &local {
        Some(d) => log::debug!("the server's data directory is visible here: {}", d.display()),
        None => log::debug!("the server's data directory is not visible here: symlinks in it cannot be detected"),
    }
    let protected = protected_dirs(local.as_deref(), spcs);
    let server_pid = files.pid_file.as_deref();
    check_target("DEST", dest, &protected, server_pid, force)?;
    for t in spcs {
        check_target("tablespace target", &t.target, &protected, server_pid, false)?;
    }
    Ok(ServerView { local_data_dir: local })
}

/// The data directory the server names: `data_directory`, or the second line of its
/// postmaster.pid (readable without pg_read_all_settings).
fn claimed_dir(f: &ServerFiles) -> Option<PathBuf> {
    let from_pid = || {
        let text = String::from_utf8_lossy(f.pid_file.as_deref()?).into_owned();
        text.lines().nth(1).map(|l| PathBuf::from(l.trim_end()))
    };
    f.data_directory.as_ref().map(PathBuf::from).or_else(from_pid).filter(|p| p.is_absolute())
}

/// The server's data directory as seen here, when its postmaster.pid here has exactly the
/// bytes, modification time and change time the server reports.
fn prove_local(f: &ServerFiles) -> Option<PathBuf> {
    let dir = claimed_dir(f)?;
    let pidfile = dir.join("postmaster.pid");
    let meta = fs::metadata(&pidfile).ok()?;
    let same = f.pid_file.as_deref() == Some(fs::read(&pidfile).ok()?.as_slice())
        && f.pid_mtime == Some(meta.mtime())
        && f.pid_ctime == Some(meta.ctime());
    if same {
        fs::canonicalize(&dir).ok()
    } else {
        None
    }
}

/// The server's directories as seen here: only when its data directory is (proven).
fn protected_dirs(local: Option<&Path>, spcs: &[Tablespace]) -> Vec<Protected> {
    let Some(data) = local else { return Vec::new() };
    let mut out = Vec::new();
    let mut add = |what: String, p: &Path| {
        if let (Ok(path), Some(id)) = (fs::canonicalize(p), id_of(p)) {
            out.push(Protected { what, path, id });
        }
    };
    add("the server's data directory".into(), data);
    add("the server's WAL directory (pg_wal)".into(), &data.join("pg_wal"));
    for t in spcs {
        add(format!("the server's tablespace \"{}\"", t.name), &t.location);
    }
    out
}

/// The nearest existing ancestor of `target` (or `target` itself), canonical, and whether it
/// is `target` itself.
fn resolve(target: &Path) -> Option<(PathBuf, bool)> {
    let abs = if target.is_absolute() { target.to_path_buf() } else { std::env::current_dir().ok()?.join(target) };
    let mut cur = Some(abs.as_path());
    while let Some(p) = cur {
        if let Ok(c) = fs::canonicalize(p) {
            return Some((c, p == abs));
        }
        cur = p.parent();
    }
    None
}

fn check_target(
    role: &'static str,
    target: &Path,
    protected: &[Protected],
    server_pid: Option<&[u8]>,
    force: bool,
) -> Result<(), DestError> {
    let Some((real, exists)) = resolve(target) else { return Ok(()) };
    let refuse = |relation: &'static str, p: &Protected| DestError::Protected {
        role,
        path: target.to_path_buf(),
        relation,
        what: p.what.clone(),
        at: p.path.clone(),
    };
    let target_id = if exists { id_of(&real) } else { None };
    for p in protected {
        if target_id == Some(p.id) {
            return Err(refuse("is", p));
        }
    }
    for p in protected {
        // Inside: an ancestor of (where) the target (would be) is that directory.
        if real.ancestors().any(|a| id_of(a) == Some(p.id)) {
            return Err(refuse("lies inside", p));
        }
        // Contains: an ancestor of that directory is the target.
        if target_id.is_some() && p.path.ancestors().skip(1).any(|a| id_of(a) == target_id) {
            return Err(refuse("contains", p));
        }
    }
    let live = |pidfile: PathBuf| {
        live_postmaster(&pidfile, server_pid).map(|(pid, own)| DestError::LivePostmaster {
            role,
            path: target.to_path_buf(),
            pidfile,
            pid,
            own,
        })
    };
    // In (or at) a live data directory.
    for a in real.ancestors() {
        if let Some(e) = live(a.join("postmaster.pid")) {
            return Err(e);
        }
    }
    // Holding one, which -f would delete.
    if force && exists {
        if let Some(e) = pid_files_below(&real).into_iter().find_map(live) {
            return Err(e);
        }
    }
    Ok(())
}

/// Every file named postmaster.pid below `dir` (symlinks not followed, unreadable
/// directories skipped).
fn pid_files_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() && e.file_name() == "postmaster.pid" => found.push(e.path()),
                _ => {}
            }
        }
    }
    found
}

/// The pid in `pidfile`, when it names a running postmaster: the server pgbb is connected to
/// (its first three lines — pid, data directory, start time — are the server's own), or a
/// postmaster running on this machine in that directory. `(pid, own)`.
fn live_postmaster(pidfile: &Path, server: Option<&[u8]>) -> Option<(i32, bool)> {
    let text = fs::read(pidfile).ok()?;
    let pid = String::from_utf8_lossy(&text).lines().next()?.trim().parse::<i32>().ok()?;
    if server.is_some_and(|s| same_postmaster(&text, s)) {
        return Some((pid, true));
    }
    (pid > 0 && running_postmaster(pid, pidfile.parent()?)).then_some((pid, false))
}

fn same_postmaster(a: &[u8], b: &[u8]) -> bool {
    let head = |t: &[u8]| t.split(|&c| c == b'\n').take(3).map(<[u8]>::to_vec).collect::<Vec<_>>();
    let (ha, hb) = (head(a), head(b));
    ha.len() == 3 && ha.iter().all(|l| !l.is_empty()) && ha == hb
}

/// Is `pid` a PostgreSQL server running in `dir` on this machine? Its working directory is
/// its data directory; when that cannot be read (another user's process), its command line
/// must name postgres.
fn running_postmaster(pid: i32, dir: &Path) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    if let Some(cwd) = id_of(Path::new(&format!("/proc/{pid}/cwd"))) {
        return id_of(dir) == Some(cwd);
    }
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmd.split(|&c| c == 0).next().unwrap_or_default();
    let name = String::from_utf8_lossy(argv0.rsplit(|&c| c == b'/').next().unwrap_or_default()).into_owned();
    name.starts_with("postgres") || name.starts_with("postmaster")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn prot(what: &str, p: &Path) -> Protected {
        Protected { what: what.into(), path: fs::canonicalize(p).unwrap(), id: id_of(p).unwrap() }
    }

    fn relation(r: Result<(), DestError>) -> Option<&'static str> {
        match r {
            Ok(()) => None,
            Err(DestError::Protected { relation, .. }) => Some(relation),
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn is_contains_and_inside_by_device_and_inode() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("srv/data");
        fs::create_dir_all(data.join("base")).unwrap();
        let p = [prot("the server's data directory", &data)];
        let link = t.path().join("link");
        symlink(t.path().join("srv"), &link).unwrap();
        let check = |d: &Path| relation(check_target("DEST", d, &p, None, true));
        assert_eq!(check(&data), Some("is"));
        assert_eq!(check(&link.join("data")), Some("is"), "through a symlinked parent");
        assert_eq!(check(&t.path().join("srv")), Some("contains"));
        assert_eq!(check(&link), Some("contains"), "a symlink to the parent");
        assert_eq!(check(t.path()), Some("contains"));
        assert_eq!(check(&data.join("base")), Some("lies inside"));
        assert_eq!(check(&data.join("new/deeper")), Some("lies inside"), "not yet existing");
        assert_eq!(check(&link.join("data/new")), Some("lies inside"));
        assert_eq!(check(&t.path().join("srv/other")), None, "a sibling");
        assert_eq!(check(&t.path().join("srv/data-x")), None);
        assert_eq!(relation(check_target("DEST", &t.path().join("elsewhere"), &[], None, true)), None);
    }

    #[test]
    fn a_postmaster_pid_of_the_server_or_a_live_postmaster_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let server = b"4242\n/srv/data\n1700000000\n5432\n/tmp\n*\n  123 456\nready   \n";
        let d = t.path().join("copy");
        fs::create_dir_all(d.join("sub/data")).unwrap();
        fs::write(d.join("sub/data/postmaster.pid"), server).unwrap();
        let own = |dir: &Path, force| match check_target("DEST", dir, &[], Some(server), force) {
            Err(DestError::LivePostmaster { pid, own, .. }) => Some((pid, own)),
            Ok(()) => None,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(own(&d.join("sub/data"), false), Some((4242, true)), "is it");
        assert_eq!(own(&d.join("sub/data/inside"), false), Some((4242, true)), "inside it");
        assert_eq!(own(&d, true), Some((4242, true)), "-f would delete it");
        assert_eq!(own(&d, false), None, "without -f nothing below DEST is removed");
        // The status line differs (read at another moment): still the same postmaster.
        assert!(same_postmaster(server, b"4242\n/srv/data\n1700000000\n5432\n/tmp\n*\n  123 456\nstopping\n"));
        assert!(!same_postmaster(server, b"4242\n/srv/data\n1700000001\n"));
        assert!(!same_postmaster(b"\n\n\n", b"\n\n\n"));
        // A stale file of another server whose pid is not running here: not refused.
        fs::write(d.join("sub/data/postmaster.pid"), b"999999999\n/x\n1\n").unwrap();
        assert_eq!(own(&d.join("sub/data"), true), None);
        // This process, running in its working directory, counts as live there only.
        let me = std::process::id();
        fs::write(d.join("sub/data/postmaster.pid"), format!("{me}\n/x\n1\n")).unwrap();
        assert_eq!(own(&d.join("sub/data"), false), None, "a live pid running elsewhere");
    }

    #[test]
    fn the_data_directory_is_claimed_from_settings_or_postmaster_pid() {
        let f = ServerFiles { pid_file: Some(b"1\n/srv/data\n2\n".to_vec()), ..Default::default() };
        assert_eq!(claimed_dir(&f), Some(PathBuf::from("/srv/data")));
        let f = ServerFiles { data_directory: Some("/d".into()), ..f };
        assert_eq!(claimed_dir(&f), Some(PathBuf::from("/d")));
        assert_eq!(claimed_dir(&ServerFiles::default()), None);
        // Nothing local to prove: not visible.
        let f = ServerFiles { data_directory: Some("/nonexistent/pgbb".into()), ..Default::default() };
        assert_eq!(prove_local(&f), None);
    }
}
