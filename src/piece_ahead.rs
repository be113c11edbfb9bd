//! `--delta`: a worker's next piece of a large file read and hashed as soon as the copy's
//! reading of the current one ends, while the server still compares that one's last pieces.
//! Each piece otherwise started its reader only once the last was answered: the copy's
//! reading stopped at every piece's end and start (15–40 ms each, 17 pieces a worker in a
//! refresh of 2 GB: docs/benchmarks.md).
//!
//! The next piece is the worker's next request, already sent (the master keeps two in flight
//! for each worker). Its copy is DEST's own range for it, which only that request writes; the
//! copy reads the same now as when the piece is served, so its hashes hold then.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::Receiver;

use crate::compare_pieces::{hash_pieces, Hashed, AHEAD};
use crate::dest::SafePath;
use crate::transfer::Transfer;

/// A piece to read ahead: its server path, its copy (opened), and its bytes `start..end`.
pub struct NextPiece {
    pub src: SafePath,
    pub file: File,
    pub range: (u64, u64),
}

/// A piece whose copy is being read: what it is (the copy's device and inode too), its hashed
/// pieces as they come, and whether they have all been read.
struct Started {
    src: Vec<u8>,
    range: (u64, u64),
    copy: Option<(u64, u64)>,
    rx: Receiver<io::Result<Hashed>>,
    done: Arc<AtomicBool>,
}

/// The request being served, and the pieces begun for the ones after it.
#[derive(Default)]
struct State {
    serving: u64,
    started: Vec<(u64, Started)>,
}

impl State {
    /// Whether request `seq` may still be begun: it comes after the one served, and was not.
    fn open(&self, seq: u64) -> bool {
        seq > self.serving && !self.started.iter().any(|(s, _)| *s == seq)
    }
}

/// The worker's requests as far as they are known, and the pieces begun ahead of them.
pub struct Lookahead {
    /// Request `seq`, if it has come, is a piece to compare and its copy opens.
    next: Box<dyn Fn(u64) -> Option<NextPiece> + Send + Sync>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Lookahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookahead").field("serving", &self.lock().serving).finish_non_exhaustive()
    }
}

/// A file's device and inode.
fn identity(file: &File) -> Option<(u64, u64)> {
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

impl Lookahead {
    pub fn new(next: impl Fn(u64) -> Option<NextPiece> + Send + Sync + 'static) -> Lookahead {
        Lookahead { next: Box::new(next), state: Mutex::new(State::default()) }
    }

    /// The worker serves request `seq` now: what was begun for earlier ones is dropped (its
    /// thread ends at its next hashed piece).
    pub fn serving(&self, seq: u64) {
        let mut st = self.lock();
        st.serving = seq;
        st.started.retain(|(s, _)| *s >= seq);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hashed pieces of `src`'s bytes `range` in the copy `file` (the same file: device
    /// and inode), if they were begun ahead for the request being served; and whether they
    /// are all read already.
    pub(crate) fn take(
        &self,
        src: &[u8],
        range: (u64, u64),
        file: &File,
    ) -> Option<(Receiver<io::Result<Hashed>>, bool)> {
        let copy = identity(file);
        let mut st = self.lock();
        let seq = st.serving;
        let at = st
            .started
            .iter()
            .position(|(s, p)| *s == seq && p.src == src && p.range == range && p.copy.is_some() && p.copy == copy)?;
        let (_, p) = st.started.remove(at);
        Some((p.rx, p.done.load(Ordering::SeqCst)))
    }

    /// The request after the one being served.
    pub(crate) fn after_serving(&self) -> u64 {
        self.lock().serving + 1
    }
}

impl Transfer {
    /// Begins request `seq` ahead (see the module), if it is a piece to compare, comes after
    /// the request being served and was not begun: a thread of its own reads and hashes its
    /// copy, at most [`AHEAD`] pieces ahead of the server, and then begins the request after
    /// it in turn.
    pub(crate) fn begin_ahead(&self, la: &Arc<Lookahead>, seq: u64) {
        if !la.lock().open(seq) {
            return;
        }
        let Some(next) = (la.next)(seq) else { return };
        let fp = self.fingerprint(&next.src, u64::MAX);
        let template = self.block_sums(&next.src).map(|t| t.piece(0));
        let (tx, rx) = crossbeam_channel::bounded(AHEAD);
        let (me, la2, done) = (self.clone(), la.clone(), Arc::new(AtomicBool::new(false)));
        let NextPiece { src, file, range } = next;
        let copy = identity(&file);
        let finished = done.clone();
        let spawned = std::thread::Builder::new().name("pgbb-copy-ahead".into()).spawn(move || {
            hash_then_ahead(&file, range, template.as_ref(), fp, tx, Some(&finished), Some((me, la2, seq + 1)));
        });
        let mut st = la.lock();
        // Served meanwhile (begun on its own) or begun by another thread: this one is dropped.
        if spawned.is_ok() && st.open(seq) {
            log::debug!("\"{}\" bytes {}..{}: its copy read ahead", src.display(), range.0, range.1);
            st.started.push((seq, Started { src: src.as_bytes().to_vec(), range, copy, rx, done }));
        }
    }
}

/// Reads and hashes `file`'s bytes `range` into `tx`, then says so in `done`; if every piece
/// went, begins request `then` ahead (its transfer, lookahead and number).
pub(crate) fn hash_then_ahead(
    file: &File,
    range: (u64, u64),
    template: Option<&crate::block_sums::BlockSums>,
    fp: crate::fingerprint::Fingerprint,
    tx: crossbeam_channel::Sender<io::Result<Hashed>>,
    done: Option<&AtomicBool>,
    then: Option<(Transfer, Arc<Lookahead>, u64)>,
) {
    let mut whole = true;
    hash_pieces(file, range, template, fp, &mut |h| {
        whole &= h.is_ok();
        whole &= tx.send(h).is_ok();
        whole
    });
    if let Some(d) = done {
        d.store(true, Ordering::SeqCst);
    }
    if let (true, Some((me, la, seq))) = (whole, then) {
        me.begin_ahead(&la, seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookahead() -> Lookahead {
        Lookahead::new(|_| None)
    }

    /// Registers `seq` as begun for `file`'s `range` (as `begin_ahead` does), if it may be.
    fn begin(la: &Lookahead, seq: u64, file: &File, range: (u64, u64)) -> bool {
        let (_tx, rx) = crossbeam_channel::bounded(1);
        let mut st = la.lock();
        if !st.open(seq) {
            return false;
        }
        let done = Arc::new(AtomicBool::new(true));
        st.started.push((seq, Started { src: b"base/1/2".to_vec(), range, copy: identity(file), rx, done }));
        true
    }

    #[test]
    fn a_piece_begun_ahead_is_taken_only_by_its_own_request_and_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&b, b"y").unwrap();
        let (fa, fb) = (File::open(&a).unwrap(), File::open(&b).unwrap());
        let la = lookahead();
        la.serving(1);
        assert!(begin(&la, 2, &fa, (0, 8)));
        assert!(!begin(&la, 2, &fa, (0, 8)), "begun once");
        assert!(!begin(&la, 1, &fa, (0, 8)), "the request being served is not begun again");
        // Not before its request is served, not for another range or path or copy.
        assert!(la.take(b"base/1/2", (0, 8), &fa).is_none());
        la.serving(2);
        assert!(la.take(b"base/1/2", (0, 16), &fa).is_none());
        assert!(la.take(b"base/1/3", (0, 8), &fa).is_none());
        assert!(la.take(b"base/1/2", (0, 8), &fb).is_none(), "the copy was replaced");
        let (_, read) = la.take(b"base/1/2", (0, 8), &fa).expect("its own");
        assert!(read);
        assert!(la.take(b"base/1/2", (0, 8), &fa).is_none(), "taken once");
        // One begun for a request that is passed (served on its own) is dropped.
        assert!(begin(&la, 3, &fa, (8, 16)));
        la.serving(4);
        assert!(la.lock().started.is_empty());
        assert!(!begin(&la, 3, &fa, (8, 16)), "too late");
        assert_eq!(la.after_serving(), 5);
    }
}
