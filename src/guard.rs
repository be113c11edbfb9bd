//! What a backup did to DEST and to each tablespace target, so that a failure (or a signal)
//! undoes exactly that: directories pgbb created are removed, with the parents it created
//! for them; a directory that existed (empty) is emptied again; nothing else is touched.
//!
//! The master's own changes to DEST ([`DestGuard::mutate`], [`DestGuard::complete`]) and its
//! cleanup hold one lock that a second signal's emergency path takes for good: that path
//! waits for the change in progress, and none follows it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::dest::{DestError, PG_CONTROL, PG_CONTROL_PENDING};
use crate::dest_lock::DestLock;

/// A directory the run writes to.
#[derive(Debug, Clone)]
struct Owned {
    dir: PathBuf,
    /// The topmost directory pgbb created to make `dir` (`dir` itself or a parent); `None`
    /// when `dir` existed before.
    created_from: Option<PathBuf>,
}

/// Where the backup in DEST stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Being made: a failure or a signal undoes it.
    Armed,
    /// Complete (global/pg_control in place): left alone.
    Complete,
    /// Undone already.
    Undone,
}

/// Shared with the signal thread: the master's changes to DEST hold it for reading, its
/// cleanup and the emergency path for writing.
#[derive(Debug)]
struct State {
    phase: Phase,
    /// DEST (first) and the tablespace targets.
    owned: Vec<Owned>,
}

/// How long a second signal waits for the change to DEST in progress (a write, a rename,
/// the first signal's cleanup) before it leaves DEST as it is.
const EMERGENCY_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct DestGuard {
    root: PathBuf,
    keep: bool,
    /// `--delta` on an older copy: a failure keeps DEST (without global/pg_control).
    refresh: bool,
    state: Arc<RwLock<State>>,
    /// Held until the guard is dropped (after any cleanup).
    _lock: DestLock,
}

/// The topmost missing directory on the way to `dir` (what creating `dir` creates first), or
/// `None` if `dir` exists.
fn first_missing(dir: &Path) -> Option<PathBuf> {
    let mut top = None;
    let mut cur = Some(dir);
    while let Some(p) = cur.filter(|p| !p.as_os_str().is_empty()) {
        match fs::symlink_metadata(p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => top = Some(p.to_path_buf()),
            _ => break,
        }
        cur = p.parent();
    }
    top
}

impl DestGuard {
    /// Makes DEST ready: creates it (mode 0700, or 0750 with group access), or reuses an empty
    /// directory; a non-empty one is an error unless `force`, which empties it first. DEST is
    /// locked before anything in it is touched: a second run into it is refused.
    pub fn prepare(
        root: &Path,
        force: bool,
        keep_on_failure: bool,
        group_access: bool,
    ) -> Result<DestGuard, DestError> {
        let created_from = first_missing(root);
        let created = match fs::create_dir(root) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(root).map_err(|e| DestError::Create { path: root.into(), source: e })?;
                true
            }
            Err(e) => return Err(DestError::Create { path: root.into(), source: e }),
        };
        // An existing DEST may be a symlink to a directory, not to anything else.
        if !created && !root.is_dir() {
            return Err(DestError::NotADirectory(root.into()));
        }
        let lock = DestLock::acquire(root)?;
        if !created && fs::read_dir(root).map_err(|e| DestError::Io { path: root.into(), source: e })?.next().is_some()
        {
            if !force {
                return Err(DestError::NotEmpty(root.into()));
            }
            log::info!("removing the contents of {} (--force)", root.display());
            empty_dir(root)?;
        }
        let mode = if group_access { 0o750 } else { 0o700 };
        fs::set_permissions(root, fs::Permissions::from_mode(mode))
            .map_err(|e| DestError::Create { path: root.into(), source: e })?;
        let owned = Owned { dir: root.into(), created_from: if created { created_from } else { None } };
        Ok(DestGuard {
            root: root.into(),
            keep: keep_on_failure,
            refresh: false,
            state: Arc::new(RwLock::new(State { phase: Phase::Armed, owned: vec![owned] })),
            _lock: lock,
        })
    }

    /// Takes an existing DEST that holds an older copy of this cluster (`--delta`, proven by
    /// `delta::origin`): locked, nothing removed. A failure keeps it, made unstartable (its
    /// global/pg_control removed) for the next `--delta` run to finish.
    pub fn adopt(root: &Path, group_access: bool) -> Result<DestGuard, DestError> {
        if !root.is_dir() {
            return Err(DestError::NotADirectory(root.into()));
        }
        let lock = DestLock::acquire(root)?;
        let mode = if group_access { 0o750 } else { 0o700 };
        fs::set_permissions(root, fs::Permissions::from_mode(mode))
            .map_err(|e| DestError::Create { path: root.into(), source: e })?;
        let owned = Owned { dir: root.into(), created_from: None };
        Ok(DestGuard {
            root: root.into(),
            keep: true,
            refresh: true,
            state: Arc::new(RwLock::new(State { phase: Phase::Armed, owned: vec![owned] })),
            _lock: lock,
        })
    }

    /// A directory outside DEST that the backup writes to (a tablespace target, empty or
    /// missing): undone with DEST. Call it before the directory is created.
    pub fn add_extra(&mut self, dir: &Path) {
        let o = Owned { dir: dir.to_path_buf(), created_from: first_missing(dir) };
        self.state.write().owned.push(o);
    }

    /// Runs `change`, one short change the master makes to DEST (a file of its own, the
    /// tablespace links), so that a second signal's emergency path never runs during it:
    /// that path waits for it to finish, and the master makes no change after that path.
    pub fn mutate<T>(&self, change: impl FnOnce() -> T) -> T {
        let _held = self.state.read();
        change()
    }

    /// Runs `last`, the change that makes the backup complete (global/pg_control into
    /// place), and if it succeeds leaves DEST alone from then on, in one step: a second
    /// signal finds DEST either incomplete (and undoes it) or complete (and keeps it).
    pub fn complete<T, E>(&mut self, last: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let mut state = self.state.write();
        let r = last();
        if r.is_ok() && state.phase == Phase::Armed {
            state.phase = Phase::Complete;
        }
        r
    }

    /// What a second Ctrl-C does on its way out (from the signal thread, the children just
    /// sent SIGKILL): waits until they are dead (so that none writes after), then for the
    /// master's change to DEST in progress, undoes what [`DestGuard::cleanup`] undoes,
    /// quietly, and keeps the master from changing DEST again. Returns what became of DEST,
    /// for the last message; the caller exits at once.
    pub fn emergency_cleanup(&self, children: crate::pool::Pids) -> Box<dyn FnOnce() -> String + Send> {
        let (root, keep, state) = (self.root.clone(), self.keep, self.state.clone());
        Box::new(move || {
            children.wait_dead(Duration::from_secs(2));
            let waiting = || {
                crate::errln!(
                    "pgbb: waiting for the change to {} in progress (at most {} s)",
                    root.display(),
                    EMERGENCY_WAIT.as_secs()
                )
            };
            last_words(&state, &root, keep, EMERGENCY_WAIT, waiting)
        })
    }

    /// The backup succeeded: leave DEST alone.
    pub fn disarm(&mut self) {
        let mut state = self.state.write();
        if state.phase == Phase::Armed {
            state.phase = Phase::Complete;
        }
    }

    /// Undoes DEST after a failure: removes it (or only its contents if it existed before), or
    /// with `--no-clean` keeps it but makes sure it cannot be started (no `global/pg_control`).
    /// The tablespace targets go (or are emptied) with it, or are kept with it.
    pub fn cleanup(&mut self) {
        // Held throughout: a second signal waits for this cleanup rather than racing it.
        let mut state = self.state.write();
        if state.phase != Phase::Armed {
            return;
        }
        state.phase = Phase::Undone;
        if self.keep {
            for f in [PG_CONTROL, PG_CONTROL_PENDING] {
                let p = self.root.join(f);
                if let Err(e) = remove_control(&self.root, f) {
                    if e.kind() != io::ErrorKind::NotFound {
                        log::error!("could not remove {}: {e}; do not start this copy", p.display());
                    }
                }
            }
            let why = if self.refresh { "the refresh failed" } else { "--no-clean" };
            crate::errln!(
                "pgbb: keeping the incomplete backup in {} ({why}); it has no global/pg_control and cannot be started; \
                 run pgbb --delta with the same DEST to finish it",
                self.root.display()
            );
            return;
        }
        for (i, o) in state.owned.iter().enumerate() {
            let what = if i == 0 { "backup" } else { "tablespace copy" };
            match undo(o) {
                Ok(()) => log::info!("removed the incomplete {what} in {}", o.dir.display()),
                Err(e) => crate::errln!("pgbb: could not remove the incomplete {what} in {}: {e}", o.dir.display()),
            }
        }
    }
}

/// The emergency path proper (see [`DestGuard::emergency_cleanup`]); `waiting` is called
/// when a change is in progress, before waiting for it at most `limit`.
fn last_words(state: &RwLock<State>, root: &Path, keep: bool, limit: Duration, waiting: impl FnOnce()) -> String {
    let held = state.try_write().or_else(|| {
        waiting();
        state.try_write_for(limit)
    });
    let Some(mut state) = held else {
        return format!(
            "a change to {} did not finish within {} s: it is left as it is (remove it if it has no global/pg_control)",
            root.display(),
            limit.as_secs()
        );
    };
    if state.phase == Phase::Armed {
        state.phase = Phase::Undone;
        let _ = remove_control(root, PG_CONTROL_PENDING);
        let _ = remove_control(root, PG_CONTROL);
        if !keep {
            for o in &state.owned {
                // Again if something was being written in it meanwhile (by the master
                // through a directory descriptor, outside any change it announced).
                let _ = undo(o).or_else(|_| undo(o)).or_else(|_| undo(o));
            }
        }
    }
    let what = match state.phase {
        Phase::Complete => format!("the backup in {} was complete and is kept", root.display()),
        _ if keep => {
            format!("the incomplete backup in {} is kept without global/pg_control (--no-clean)", root.display())
        }
        _ => format!("the incomplete backup in {} was removed", root.display()),
    };
    // Held until the process exits: the master changes DEST no more.
    std::mem::forget(state);
    what
}

impl Drop for DestGuard {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Removes `root/global/NAME` (`f`), never through a symlink: if `global` is not a directory
/// of DEST's own, what it points to is not DEST's to change.
fn remove_control(root: &Path, f: &str) -> io::Result<()> {
    let global = root.join("global");
    match fs::symlink_metadata(&global) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(io::Error::other(format!("{} is not a directory of its own", global.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    fs::remove_file(root.join(f))
}

/// Removes what the run created of `o`, or empties it if it existed.
fn undo(o: &Owned) -> io::Result<()> {
    let Some(top) = &o.created_from else {
        return match fs::symlink_metadata(&o.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            _ => empty_dir(&o.dir).map_err(|e| io::Error::other(e.to_string())),
        };
    };
    match fs::remove_dir_all(&o.dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // The parents pgbb made for it, while they are empty (another run may use them now).
    let mut cur = o.dir.parent();
    while let Some(p) = cur.filter(|p| p.starts_with(top)) {
        if fs::remove_dir(p).is_err() {
            break;
        }
        cur = p.parent();
    }
    Ok(())
}

/// Removes everything inside `root` (symlinks themselves, never what they point to).
pub fn empty_dir(root: &Path) -> Result<(), DestError> {
    let io = |e: io::Error| DestError::Io { path: root.into(), source: e };
    for entry in fs::read_dir(root).map_err(io)? {
        let entry = entry.map_err(io)?;
        let p = entry.path();
        let ft = entry.file_type().map_err(io)?;
        if ft.is_dir() {
            fs::remove_dir_all(&p).map_err(io)?;
        } else {
            fs::remove_file(&p).map_err(io)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a failure, pg_control is removed from DEST's own `global` only, never through a
    /// symlink to another cluster's.
    #[test]
    fn pg_control_is_never_removed_through_a_link() {
        let other = tempfile::tempdir().unwrap();
        fs::create_dir(other.path().join("global")).unwrap();
        fs::write(other.path().join("global/pg_control"), b"theirs").unwrap();
        let dest = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(other.path().join("global"), dest.path().join("global")).unwrap();
        assert!(remove_control(dest.path(), PG_CONTROL).is_err());
        assert!(other.path().join("global/pg_control").exists());
        let own = tempfile::tempdir().unwrap();
        fs::create_dir(own.path().join("global")).unwrap();
        fs::write(own.path().join("global/pg_control"), b"ours").unwrap();
        remove_control(own.path(), PG_CONTROL).unwrap();
        assert!(!own.path().join("global/pg_control").exists());
    }

    #[test]
    fn guard_refuses_non_empty_and_cleans_up() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("d");
        let mut g = DestGuard::prepare(&dest, false, false, false).unwrap();
        fs::write(dest.join("x"), "x").unwrap();
        g.cleanup();
        assert!(!dest.exists());
        drop(g);
        let mut g = DestGuard::prepare(&dest, false, false, false).unwrap();
        g.disarm();
        fs::write(dest.join("x"), "x").unwrap();
        drop(g);
        assert!(matches!(DestGuard::prepare(&dest, false, false, false), Err(DestError::NotEmpty(_))));
        let mut g = DestGuard::prepare(&dest, true, true, false).unwrap();
        fs::create_dir(dest.join("global")).unwrap();
        fs::write(dest.join(PG_CONTROL), "c").unwrap();
        g.cleanup();
        assert!(dest.join("global").exists() && !dest.join(PG_CONTROL).exists());
        drop(g);
        let f = t.path().join("file");
        fs::write(&f, "").unwrap();
        assert!(matches!(DestGuard::prepare(&f, false, false, false), Err(DestError::NotADirectory(_))));
    }

    #[test]
    fn a_locked_dest_is_refused_and_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("d");
        let g = DestGuard::prepare(&dest, false, false, false).unwrap();
        fs::write(dest.join("x"), "x").unwrap();
        // Even with -f: the first run's files stay.
        assert!(matches!(DestGuard::prepare(&dest, true, false, false), Err(DestError::InUse { .. })));
        assert!(dest.join("x").exists());
        drop(g);
        assert!(!dest.exists());
    }

    #[test]
    fn what_the_run_created_goes_and_what_existed_is_emptied() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("new/deeper/d");
        let made = t.path().join("spc/a/b");
        let existed = t.path().join("existed");
        fs::create_dir(&existed).unwrap();
        let mut g = DestGuard::prepare(&dest, false, false, false).unwrap();
        for d in [&made, &existed] {
            g.add_extra(d);
            fs::create_dir_all(d.join("PG_15_1/5")).unwrap();
            fs::write(d.join("PG_15_1/5/1259"), "x").unwrap();
        }
        // Something else appeared next to what pgbb made meanwhile: it stays.
        fs::create_dir(t.path().join("spc/other")).unwrap();
        g.cleanup();
        assert!(!t.path().join("new").exists(), "DEST and the parents made for it");
        assert!(!t.path().join("spc/a").exists() && t.path().join("spc/other").exists());
        assert!(existed.is_dir() && fs::read_dir(&existed).unwrap().next().is_none());
    }

    #[test]
    fn the_emergency_path_undoes_the_same() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("d");
        let spc = t.path().join("spc");
        let mut g = DestGuard::prepare(&dest, false, false, false).unwrap();
        let last_words = g.emergency_cleanup(crate::pool::Pids::default());
        // Added after the closure was made: still undone.
        g.add_extra(&spc);
        fs::create_dir_all(spc.join("PG_15_1")).unwrap();
        assert!(last_words().contains("was removed"));
        assert!(!dest.exists() && !spc.exists());
        // Its lock stays taken (the process exits at once): the guard's own cleanup would
        // wait for it forever.
        std::mem::forget(g);
    }

    #[test]
    fn the_emergency_path_waits_for_the_change_in_progress_and_none_follows() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("d");
        let g = DestGuard::prepare(&dest, false, false, false).unwrap();
        let (state, root) = (g.state.clone(), g.root.clone());
        let (waiting_tx, waiting_rx) = crossbeam_channel::bounded(1);
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        g.mutate(|| {
            fs::write(dest.join("backup_label"), "x").unwrap();
            // The second signal arrives in the middle of the change.
            std::thread::spawn(move || {
                let notify = move || waiting_tx.send(()).unwrap();
                done_tx.send(last_words(&state, &root, false, Duration::from_secs(600), notify)).unwrap();
            });
            // It found the change in progress: it waits, and has undone nothing.
            waiting_rx.recv().unwrap();
            assert!(done_rx.try_recv().is_err() && dest.join("backup_label").exists());
            // The change goes on to its end.
            fs::write(dest.join("backup_manifest"), "y").unwrap();
        });
        assert!(done_rx.recv().unwrap().contains("was removed"));
        assert!(!dest.exists(), "all of the change undone after it");
        // And no change after it: the lock stays taken until the process exits.
        assert!(g.state.try_read().is_none());
        std::mem::forget(g);
    }

    #[test]
    fn a_second_signal_keeps_a_complete_backup_and_gives_up_on_a_change_that_hangs() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("d");
        let mut g = DestGuard::prepare(&dest, false, false, false).unwrap();
        fs::create_dir(dest.join("global")).unwrap();
        g.complete(|| fs::write(dest.join(PG_CONTROL), "c")).unwrap();
        let what = last_words(&g.state, &g.root, false, Duration::ZERO, || {});
        assert!(what.contains("was complete and is kept"), "{what}");
        assert!(dest.join(PG_CONTROL).exists());
        std::mem::forget(g);

        // A change that does not finish (a hung file system): DEST is left as it is.
        let dest = t.path().join("e");
        let g = DestGuard::prepare(&dest, false, false, false).unwrap();
        let what = g.mutate(|| last_words(&g.state, &g.root, false, Duration::from_millis(1), || {}));
        assert!(what.contains("did not finish within"), "{what}");
        assert!(dest.exists());
    }
}
