//! The master's children: spawning them (the same binary, re-executed), one reader thread
//! per child feeding a channel, writing requests to their stdin, and stopping them.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::Error;
use crate::pg::conn::PASSWORD_ENV;

/// What the reader threads report.
#[derive(Debug)]
pub enum Event {
    /// One line from a child's stdout.
    Line { child: usize, line: String },
    /// The child's stdout closed (it exited, or is about to).
    Closed { child: usize },
}

struct Slot {
    role: String,
    child: Child,
    stdin: Option<ChildStdin>,
    status: Option<ExitStatus>,
}

/// Pids of live children, shared with the signal thread so a second Ctrl-C can kill them.
pub type Pids = Arc<Mutex<Vec<i32>>>;

pub struct Pool {
    slots: Vec<Slot>,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    pids: Pids,
}

/// Describes an exit status for a message.
pub fn describe_status(s: &ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(sig) => format!("killed by {sig}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => "unknown status".into(),
    }
}

fn self_exe() -> std::path::PathBuf {
    let proc_exe = std::path::PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        if let Ok(p) = std::fs::read_link(&proc_exe) {
            if p.exists() {
                return p;
            }
        }
        return proc_exe;
    }
    std::env::current_exe().unwrap_or(proc_exe)
}

impl Pool {
    pub fn new(pids: Pids) -> Pool {
        let (tx, rx) = unbounded();
        Pool { slots: Vec::new(), tx, rx, pids }
    }

    pub fn events(&self) -> &Receiver<Event> {
        &self.rx
    }

    pub fn role(&self, i: usize) -> &str {
        &self.slots[i].role
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.slots[i].child.id()
    }

    /// Starts `pgbb ARGS` as a child: own process group (a terminal's Ctrl-C reaches only the
    /// master, which then stops the children in order), SIGTERM if the master dies, the
    /// password in the environment only.
    pub fn spawn(&mut self, role: &str, args: Vec<OsString>, password: Option<&str>) -> Result<usize, Error> {
        let mut cmd = Command::new(self_exe());
        cmd.args(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).process_group(0);
        match password {
            Some(p) => cmd.env(PASSWORD_ENV, p),
            None => cmd.env_remove(PASSWORD_ENV),
        };
        let parent = std::process::id() as i32;
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(Error::Spawn)?;
        let idx = self.slots.len();
        let stdout = child.stdout.take().ok_or_else(|| Error::Io("child has no stdout".into()))?;
        let stdin = child.stdin.take();
        let tx = self.tx.clone();
        std::thread::Builder::new()
            .name(format!("read-{role}"))
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf).into_owned();
                            if tx.send(Event::Line { child: idx, line }).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = tx.send(Event::Closed { child: idx });
            })
            .map_err(Error::Spawn)?;
        log::debug!("started {role} as pid {}", child.id());
        if let Ok(mut p) = self.pids.lock() {
            p.push(child.id() as i32);
        }
        self.slots.push(Slot { role: role.to_string(), child, stdin, status: None });
        Ok(idx)
    }

    /// Writes one line to a child's stdin.
    pub fn send(&mut self, i: usize, line: &str) -> Result<(), Error> {
        let slot = &mut self.slots[i];
        let role = slot.role.clone();
        let stdin = slot.stdin.as_mut().ok_or_else(|| Error::Io(format!("{role}: input already closed")))?;
        match stdin.write_all(line.as_bytes()).and_then(|()| stdin.flush()) {
            Ok(()) => Ok(()),
            // The child is gone: report how it ended rather than the broken pipe.
            Err(e) => match self.wait(i, Duration::from_secs(2)) {
                Some(s) => Err(Error::ChildDied { role, status: describe_status(&s) }),
                None => Err(Error::ChildDied { role, status: format!("its input is closed: {e}") }),
            },
        }
    }

    /// Closes a child's stdin: at end of input it finishes and exits.
    pub fn close_stdin(&mut self, i: usize) {
        self.slots[i].stdin.take();
    }

    /// Waits for a child that closed its stdout, at most `timeout`.
    pub fn wait(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let slot = &mut self.slots[i];
        loop {
            if let Some(s) = slot.status {
                return Some(s);
            }
            match slot.child.try_wait() {
                Ok(Some(s)) => {
                    slot.status = Some(s);
                    let pid = slot.child.id() as i32;
                    if let Ok(mut p) = self.pids.lock() {
                        p.retain(|&x| x != pid);
                    }
                    return Some(s);
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }

    fn signal_all(&self, sig: Signal) {
        for s in self.slots.iter().filter(|s| s.status.is_none()) {
            let _ = kill(Pid::from_raw(s.child.id() as i32), sig);
        }
    }

    /// Stops every child: close their input, SIGTERM, and SIGKILL whatever is left after
    /// `grace`; reaps them all.
    pub fn stop_all(&mut self, grace: Duration) {
        for s in &mut self.slots {
            s.stdin.take();
        }
        self.signal_all(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        for i in 0..self.slots.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait(i, left);
        }
        self.signal_all(Signal::SIGKILL);
        for i in 0..self.slots.len() {
            self.wait(i, Duration::from_secs(5));
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.slots.iter().any(|s| s.status.is_none()) {
            self.stop_all(Duration::from_secs(2));
        }
    }
}
