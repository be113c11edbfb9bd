//! Background `syncfs` of DEST's file systems while the copy runs, so that the final sync
//! has little left to write (small files are not handed to write-back one by one).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use nix::errno::Errno;

use crate::dest::DestError;

/// The pause between two background syncs.
const EVERY: Duration = Duration::from_millis(250);

/// Copies of this many files or more are synced in the background. A copy of fewer has few
/// small files' bytes left for the final sync (its large files are in write-back already),
/// and syncing every 250 ms cost it more than it saved: 2089 MB in 1098 files took 2.47 s
/// with `-j 2` against 2.21 s without (docs/benchmarks.md).
pub const FROM_FILES: usize = 10_000;

/// One file system to sync: a descriptor on it, and the directory it was opened as (named
/// in an error).
pub struct Target {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

/// The first error a background sync met: not every error `syncfs` reports is reported
/// again to the next caller (the block device's error flags are cleared when reported, and
/// before Linux 5.8 nothing is kept), so it fails the backup at [`Flusher::finish`].
type FirstError = Arc<Mutex<Option<(PathBuf, Errno)>>>;

/// A thread that syncs its targets' file systems until it is finished or dropped.
pub struct Flusher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    failed: FirstError,
}

impl Flusher {
    pub fn start(targets: Vec<Target>) -> Flusher {
        Flusher::start_with(targets, |fd| nix::unistd::syncfs(fd))
    }

    /// [`Flusher::start`] with `sync` in place of `syncfs` (for the tests).
    fn start_with(targets: Vec<Target>, sync: impl Fn(&OwnedFd) -> nix::Result<()> + Send + 'static) -> Flusher {
        let (stop, rx) = bounded::<()>(0);
        let failed = FirstError::default();
        let first = failed.clone();
        let thread = std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || loop {
                for t in &targets {
                    if let Err(e) = sync(&t.fd) {
                        let mut f = first.lock().unwrap_or_else(|p| p.into_inner());
                        f.get_or_insert((t.path.clone(), e));
                    }
                }
                match rx.recv_timeout(EVERY) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            })
            .ok();
        Flusher { stop: Some(stop), thread, failed }
    }

    /// Stops the thread, waits for its last sync to end, and reports the first error any
    /// of its syncs met.
    pub fn finish(mut self) -> Result<(), DestError> {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner()).take();
        match failed {
            Some((path, e)) => Err(DestError::Io { path, source: std::io::Error::from_raw_os_error(e as i32) }),
            None => Ok(()),
        }
    }
}

/// Dropped without [`Flusher::finish`] (the copy failed): the thread is told to stop after
/// the sync it may be in (a `syncfs` cannot be interrupted; the process does not end before
/// it returns), and its errors are of no more use.
impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::Receiver;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A flusher of a temporary directory whose n-th sync (from 0) does `sync(n, fd)`, once
    /// its first sync has run; with the directory's path and a channel that disconnects
    /// when the thread has ended (its sender lives in the thread's closure).
    fn started(
        sync: impl Fn(usize, &OwnedFd) -> nix::Result<()> + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf, Flusher, Receiver<()>) {
        let dir = tempfile::tempdir().unwrap();
        let fd: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        let path = dir.path().to_path_buf();
        let (alive, gone) = bounded::<()>(0);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let f = Flusher::start_with(vec![Target { fd, path: path.clone() }], move |fd| {
            let _keep = &alive;
            let n = c.fetch_add(1, Ordering::SeqCst);
            sync(n, fd)
        });
        while calls.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        (dir, path, f, gone)
    }

    #[test]
    fn it_syncs_until_finished_and_finish_waits_for_the_thread() {
        let (_d, _, f, gone) = started(|_, fd| nix::unistd::syncfs(fd));
        f.finish().unwrap();
        // Joined: the thread has ended, its closure (and the sender in it) is gone.
        assert_eq!(gone.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected));
    }

    #[test]
    fn the_first_error_of_a_background_sync_fails_finish() {
        let (_d, path, f, _) = started(|n, _| if n == 0 { Err(Errno::EIO) } else { Ok(()) });
        match f.finish() {
            Err(DestError::Io { path: p, source }) => {
                assert_eq!(p, path);
                assert_eq!(source.raw_os_error(), Some(Errno::EIO as i32));
            }
            other => panic!("expected the background error, got {other:?}"),
        }
    }

    #[test]
    fn a_dropped_flusher_stops_after_its_sync() {
        let (_d, _, f, gone) = started(|_, _| Ok(()));
        drop(f);
        // Every sender is gone once the thread has ended (not a timeout: it did end).
        assert_eq!(gone.recv_timeout(Duration::from_secs(10)), Err(RecvTimeoutError::Disconnected));
    }
}
