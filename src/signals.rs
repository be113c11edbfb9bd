//! SIGINT/SIGTERM/SIGHUP in the master: the first asks for an orderly abort (the running
//! query is cancelled, children are told to stop); the second kills the children at once,
//! undoes DEST once the master's change to it in progress is done (see [`crate::guard`]) and
//! exits with `_exit`: no exit handler runs while the main thread may still be busy. A signal that was ignored when pgbb started (`nohup`, a background job of a
//! non-interactive shell) stays ignored, as pg_basebackup leaves it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};
use nix::sys::signal::Signal as NixSignal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::Error;
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

/// The signals that interrupt a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Int,
    Term,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Int, Signal::Term, Signal::Hup];

    pub const fn number(self) -> i32 {
        match self {
            Signal::Hup => SIGHUP,
            Signal::Int => SIGINT,
            Signal::Term => SIGTERM,
        }
    }

    pub fn from_number(n: i32) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.number() == n)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Signal::Hup => "SIGHUP",
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }

    /// The exit status of a run this signal ended: 128 + its number, as a shell shows it.
    pub const fn exit_code(self) -> i32 {
        128 + self.number()
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
pub fn handled() -> Vec<Signal> {
    Signal::ALL
        .into_iter()
        .filter(|&s| {
            let ign = ignored(s.number());
            if ign {
                log::debug!("{s} was ignored at start: it stays ignored");
            }
            !ign
        })
        .collect()
}

/// Installs the handlers. The receiver yields the first signal.
pub fn install(pids: Pids) -> Result<(Arc<Interrupt>, Receiver<Signal>), Error> {
    let mut signals = Signals::new(handled().into_iter().map(Signal::number))
        .map_err(|source| Error::System { what: "install signal handlers", source })?;
    let state = Arc::new(Interrupt::default());
    let (tx, rx) = bounded(1);
    let st = state.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever().filter_map(Signal::from_number) {
                let n = st.count.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 1 {
                    crate::errln!("pgbb: {sig} received: aborting the backup (send it again to kill at once)");
                    let _ = tx.try_send(sig);
                    pids.signal_all(NixSignal::SIGTERM);
                    if let Some(t) = st.cancel.lock().ok().and_then(|c| c.clone()) {
                        // In a thread of its own: this one must stay free for a second signal.
                        let before = t.finished();
                        let _ = std::thread::Builder::new().name("cancel".into()).spawn(move || {
                            cancel_until(|| t.cancel(), || t.finished() != before, CANCEL_AGAIN, CANCEL_TRIES)
                        });
                    }
                } else {
                    std::mem::forget(ENDING.lock().unwrap_or_else(|p| p.into_inner()));
                    pids.signal_all(NixSignal::SIGKILL);
                    let dest = st.last_words.lock().ok().and_then(|mut l| l.take()).map(|f| f());
                    crate::errln!(
                        "pgbb: killed by a second {sig}; {}the server ends the backup when this connection drops",
                        dest.map_or(String::new(), |d| format!("{d}; "))
                    );
                    // SAFETY: _exit(2) ends the process at once; it is always safe to call.
                    unsafe { libc::_exit(sig.exit_code()) }
                }
            }
        })
        .map_err(|source| Error::System { what: "start the signal thread", source })?;
    Ok((state, rx))
}

/// How long a cancel request has to end the statement before it is sent again, and how many
/// times it is sent.
const CANCEL_AGAIN: Duration = Duration::from_secs(1);
const CANCEL_TRIES: u32 = 60;

/// Sends a cancel request, and again every `again` until `returned` says the statement it was
/// meant for has returned (at most `tries` times). The server drops a cancel request that
/// reaches a session waiting for its next message: one sent just before a statement, or
/// between its Parse and its Execute (two round trips), would otherwise leave that statement
/// (a spread checkpoint's hour, say) running.
fn cancel_until<E: std::fmt::Display>(
    mut send: impl FnMut() -> Result<(), E>,
    returned: impl Fn() -> bool,
    again: Duration,
    tries: u32,
) -> u32 {
    for sent in 1..=tries {
        if let Err(e) = send() {
            log::warn!("could not send the cancel request: {e}");
        }
        let until = Instant::now() + again;
        while Instant::now() < until {
            if returned() {
                return sent;
            }
            std::thread::sleep(again.min(Duration::from_millis(20)));
        }
        log::info!("the cancelled statement is still running: sending the cancel request again");
    }
    tries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_request_the_server_dropped_is_sent_again_until_the_statement_returns() {
        use std::sync::atomic::AtomicU32;
        // The server drops the first two requests; the third ends the statement.
        let sent = AtomicU32::new(0);
        let send = || -> Result<(), String> {
            sent.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        let n = cancel_until(send, || sent.load(Ordering::SeqCst) >= 3, Duration::from_millis(5), 100);
        assert_eq!(n, 3);
        // A statement that returns at once: one request, no more.
        let sent = AtomicU32::new(0);
        let send = || -> Result<(), String> {
            sent.fetch_add(1, Ordering::SeqCst);
            Err("refused".into())
        };
        assert_eq!(cancel_until(send, || true, Duration::from_millis(5), 100), 1);
        assert_eq!(sent.load(Ordering::SeqCst), 1);
        // One that never returns: given up after `tries`.
        assert_eq!(cancel_until(|| Ok::<(), String>(()), || false, Duration::from_millis(1), 4), 4);
    }

    #[test]
    fn exit_codes_are_128_plus_the_number() {
        assert_eq!(Signal::Hup.exit_code(), 129);
        assert_eq!(Signal::Int.exit_code(), 130);
        assert_eq!(Signal::Term.exit_code(), 143);
        for s in Signal::ALL {
            assert_eq!(Signal::from_number(s.number()), Some(s));
        }
        assert_eq!(Signal::from_number(libc::SIGUSR1), None);
        assert_eq!(Signal::Hup.to_string(), "SIGHUP");
    }
}
