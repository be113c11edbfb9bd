//! Background `syncfs` of DEST's file systems while the copy runs, so that the final sync
//! has little left to write (small files are not handed to write-back one by one).

use std::os::fd::OwnedFd;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

/// The pause between two background syncs.
const EVERY: Duration = Duration::from_millis(250);

/// Copies of this many files or more are synced in the background. A copy of fewer has few
/// small files' bytes left for the final sync (its large files are in write-back already),
/// and syncing every 250 ms cost it more than it saved: 2089 MB in 1098 files took 2.47 s
/// with `-j 2` against 2.21 s without (docs/benchmarks.md).
pub const FROM_FILES: usize = 10_000;

/// A thread that syncs the file systems of its descriptors until it is dropped. Each
/// descriptor is an open file description of its own (not a `dup` of the one the final sync
/// uses), so a write-back error it sees is still reported to the final `syncfs` (Linux keeps
/// the error position per open file); it ignores errors itself.
pub struct Flusher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub fn start(fds: Vec<OwnedFd>) -> Flusher {
        let (stop, rx) = bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || loop {
                for fd in &fds {
                    if let Err(e) = nix::unistd::syncfs(fd) {
                        log::debug!("background syncfs: {e} (the final sync reports it)");
                    }
                }
                match rx.recv_timeout(EVERY) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            })
            .ok();
        Flusher { stop: Some(stop), thread }
    }
}

impl Flusher {
    /// Stops the thread and waits for its last sync to end.
    pub fn finish(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Dropped without [`Flusher::finish`] (the copy failed): the thread is told to stop and left
/// to end its sync on its own, so that ending the backup never waits for a slow disk.
impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_syncs_until_told_to_stop_and_finish_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let fd: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        let f = Flusher::start(vec![fd]);
        let t = f.thread.as_ref().map(|t| t.thread().id());
        assert!(t.is_some(), "the thread started");
        // finish joins: it returns only once the thread has ended (a thread that kept on
        // syncing would hang this test).
        f.finish();
    }
}
