//! SIGINT/SIGTERM/SIGHUP in the master: the first asks for an orderly abort (the running
//! query is cancelled, children are told to stop); the second kills the children at once,
//! undoes DEST once the master's change to it in progress is done (see [`crate::guard`]) and
//! exits with `_exit`: no exit handler runs while the main thread may still be busy. A signal that was ignored when pgbb started (`nohup`, a background job of a
//! non-interactive shell) stays ignored, as pg_basebackup leaves it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, Receiver};
use nix::sys::signal::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{exit, Error};
use crate::pg::conn::Canceller;
use crate::pool::Pids;

/// Taken, for good, by whichever thread ends the process first: the main thread on its way
/// out ([`exit`]) or the signal thread on a second signal. The other cannot end it its own
/// way halfway (the main thread's exit with its own status and message while the second
/// signal is undoing DEST, or the reverse).
static ENDING: Mutex<()> = Mutex::new(());

/// Ends the process with `code` (the main thread's way out); if a second signal is being
/// handled, waits for it instead: it ends the process.
pub fn exit(code: i32) -> ! {
    std::mem::forget(ENDING.lock().unwrap_or_else(|p| p.into_inner()));
    std::process::exit(code)
}

/// What a second signal does just before exiting; says what became of DEST.
pub type LastWords = Box<dyn FnOnce() -> String + Send>;

/// Shared between the master's main thread and its signal thread.
#[derive(Default)]
pub struct Interrupt {
    count: AtomicUsize,
    cancel: Mutex<Option<Canceller>>,
    last_words: Mutex<Option<LastWords>>,
}

impl Interrupt {
    pub fn requested(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }

    /// The session whose running statement the first signal cancels (over TLS when the
    /// session may use it, as libpq sends a cancel request).
    pub fn set_cancel(&self, t: Option<Canceller>) {
        if let Ok(mut c) = self.cancel.lock() {
            *c = t;
        }
    }

    /// What a second signal does just before exiting (make DEST unstartable).
    pub fn set_last_words(&self, f: LastWords) {
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

/// The exit status for a run ended by this signal (128 + its number).
pub fn exit_code(name: &str) -> i32 {
    match name {
        "SIGTERM" => exit::SIGTERM,
        "SIGHUP" => exit::SIGHUP,
        _ => exit::SIGINT,
    }
}

/// True when `sig` is ignored (SIG_IGN), as `nohup` leaves SIGHUP for the program it starts.
fn ignored(sig: i32) -> bool {
    // SAFETY: a null new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Of SIGINT, SIGTERM and SIGHUP, those pgbb handles: the ones not ignored at start. Call it
/// before installing any handler.
pub fn handled() -> Vec<i32> {
    [SIGINT, SIGTERM, SIGHUP]
        .into_iter()
        .filter(|&s| {
            let ign = ignored(s);
            if ign {
                log::debug!("{} was ignored at start: it stays ignored", name(s));
            }
            !ign
        })
        .collect()
}

/// Installs the handlers. The receiver yields the name of the first signal.
pub fn install(pids: Pids) -> Result<(Arc<Interrupt>, Receiver<&'static str>), Error> {
    let mut signals = Signals::new(handled()).map_err(|e| Error::Io(format!("cannot install signal handlers: {e}")))?;
    let state = Arc::new(Interrupt::default());
    let (tx, rx) = bounded(1);
    let st = state.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let n = st.count.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 1 {
                    crate::errln!("pgbb: {} received: aborting the backup (send it again to kill at once)", name(sig));
                    let _ = tx.try_send(name(sig));
                    pids.signal_all(Signal::SIGTERM);
                    let token = st.cancel.lock().ok().and_then(|c| c.clone());
                    if let Some(t) = token {
                        if let Err(e) = t.cancel() {
                            log::warn!("could not send the cancel request: {e}");
                        }
                    }
                } else {
                    std::mem::forget(ENDING.lock().unwrap_or_else(|p| p.into_inner()));
                    pids.signal_all(Signal::SIGKILL);
                    let dest = st.last_words.lock().ok().and_then(|mut l| l.take()).map(|f| f());
                    crate::errln!(
                        "pgbb: killed by a second {}; {}the server ends the backup when this connection drops",
                        name(sig),
                        dest.map_or(String::new(), |d| format!("{d}; "))
                    );
                    // SAFETY: _exit(2) ends the process at once; it is always safe to call.
                    unsafe { libc::_exit(exit_code(name(sig))) }
                }
            }
        })
        .map_err(|e| Error::Io(format!("cannot start the signal thread: {e}")))?;
    Ok((state, rx))
}
