//! SIGINT/SIGTERM/SIGHUP in the master: the first asks for an orderly abort (the running
//! query is cancelled, children are told to stop); the second kills the children at once and
//! exits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, Receiver};
use nix::sys::signal::Signal;
use postgres::{CancelToken, NoTls};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{exit, Error};
use crate::pool::Pids;

/// Shared between the master's main thread and its signal thread.
#[derive(Default)]
pub struct Interrupt {
    count: AtomicUsize,
    cancel: Mutex<Option<CancelToken>>,
    last_words: Mutex<Option<Box<dyn Fn() + Send>>>,
}

impl Interrupt {
    pub fn requested(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }

    /// The session whose running statement the first signal cancels.
    pub fn set_cancel(&self, t: Option<CancelToken>) {
        if let Ok(mut c) = self.cancel.lock() {
            *c = t;
        }
    }

    /// What a second signal does just before exiting (make DEST unstartable).
    pub fn set_last_words(&self, f: Box<dyn Fn() + Send>) {
        if let Ok(mut l) = self.last_words.lock() {
            *l = Some(f);
        }
    }
}

fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "SIGHUP",
    }
}

/// Installs the handlers. The receiver yields the name of the first signal.
pub fn install(pids: Pids) -> Result<(Arc<Interrupt>, Receiver<&'static str>), Error> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| Error::Io(format!("cannot install signal handlers: {e}")))?;
    let state = Arc::new(Interrupt::default());
    let (tx, rx) = bounded(1);
    let st = state.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let n = st.count.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 1 {
                    eprintln!("pgbb: {} received: aborting the backup (send it again to kill at once)", name(sig));
                    let _ = tx.try_send(name(sig));
                    pids.signal_all(Signal::SIGTERM);
                    let token = st.cancel.lock().ok().and_then(|c| c.clone());
                    if let Some(t) = token {
                        let _ = t.cancel_query(NoTls);
                    }
                } else {
                    pids.signal_all(Signal::SIGKILL);
                    if let Some(f) = st.last_words.lock().ok().and_then(|mut l| l.take()) {
                        f();
                    }
                    eprintln!(
                        "pgbb: killed by a second {}; the server ends the backup when this connection drops",
                        name(sig)
                    );
                    std::process::exit(if sig == SIGTERM { exit::SIGTERM } else { exit::SIGINT });
                }
            }
        })
        .map_err(|e| Error::Io(format!("cannot start the signal thread: {e}")))?;
    Ok((state, rx))
}
