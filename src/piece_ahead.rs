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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// A piece whose copy is being read: what it is, and its hashed pieces as they come.
struct Started {
    src: Vec<u8>,
    range: (u64, u64),
    rx: Receiver<io::Result<Hashed>>,
}

/// The worker's requests as far as they are known, and the pieces begun ahead of them.
pub struct Lookahead {
    /// Request `seq`, if it has come, is a piece to compare and its copy opens.
    next: Box<dyn Fn(u64) -> Option<NextPiece> + Send + Sync>,
    /// The request being served.
    serving: AtomicU64,
    started: Mutex<Vec<(u64, Started)>>,
}

impl std::fmt::Debug for Lookahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookahead").field("serving", &self.serving).finish_non_exhaustive()
    }
}

impl Lookahead {
    pub fn new(next: impl Fn(u64) -> Option<NextPiece> + Send + Sync + 'static) -> Lookahead {
        Lookahead { next: Box::new(next), serving: AtomicU64::new(0), started: Mutex::new(Vec::new()) }
    }

    /// The worker serves request `seq` now: what was begun for earlier ones is dropped.
    pub fn serving(&self, seq: u64) {
        self.serving.store(seq, Ordering::SeqCst);
        self.lock().retain(|(s, _)| *s >= seq);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Started)>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hashed pieces of `src`'s bytes `range`, if they were begun ahead.
    pub(crate) fn take(&self, src: &[u8], range: (u64, u64)) -> Option<Receiver<io::Result<Hashed>>> {
        let seq = self.serving.load(Ordering::SeqCst);
        let mut started = self.lock();
        let at = started.iter().position(|(s, p)| *s == seq && p.src == src && p.range == range)?;
        Some(started.remove(at).1.rx)
    }

    /// The request after the one being served.
    pub(crate) fn after_serving(&self) -> u64 {
        self.serving.load(Ordering::SeqCst) + 1
    }
}

impl Transfer {
    /// Begins request `seq` ahead (see the module), if it is a piece to compare and nothing
    /// was begun for it: a thread of its own reads and hashes its copy, at most [`AHEAD`]
    /// pieces ahead of the server, and then begins the request after it in turn.
    pub(crate) fn begin_ahead(&self, la: &Arc<Lookahead>, seq: u64) {
        if la.lock().iter().any(|(s, _)| *s == seq) {
            return;
        }
        let Some(next) = (la.next)(seq) else { return };
        let fp = self.fingerprint(&next.src, u64::MAX);
        let template = self.block_sums(&next.src).map(|t| t.piece(0));
        let (tx, rx) = crossbeam_channel::bounded(AHEAD);
        let (me, la2) = (self.clone(), la.clone());
        let NextPiece { src, file, range } = next;
        let spawned = std::thread::Builder::new().name("pgbb-copy-ahead".into()).spawn(move || {
            let mut whole = true;
            hash_pieces(&file, range, template.as_ref(), fp, &mut |h| {
                whole &= h.is_ok();
                tx.send(h).is_ok() && whole
            });
            if whole {
                me.begin_ahead(&la2, seq + 1);
            }
        });
        if spawned.is_ok() {
            log::debug!("\"{}\" bytes {}..{}: its copy read ahead", src.display(), range.0, range.1);
            la.lock().push((seq, Started { src: src.as_bytes().to_vec(), range, rx }));
        }
    }
}
