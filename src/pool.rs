//! The master's children: spawning them (the same binary, re-executed), one reader thread
//! per child feeding a channel, writing requests to their stdin, waiting for them and
//! stopping them.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::Error;
use crate::pg::conn::PASSWORD_ENV;
use crate::pidfd::PidFd;

/// How often a child is looked at without a pidfd (a kernel before 5.3).
const POLL: Duration = Duration::from_millis(10);

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
    pidfd: Option<Arc<PidFd>>,
}

/// A child as the signal thread sees it.
#[derive(Debug)]
struct Listed {
    pid: i32,
    pidfd: Option<Arc<PidFd>>,
}

/// The children not yet reaped, shared with the signal thread so that a signal can stop
/// them. Signals are sent under the list's lock, by pidfd where the kernel has them, and a
/// child leaves the list in the same critical section in which it is reaped: a signal
/// never reaches another process that reused a child's pid.
#[derive(Debug, Clone, Default)]
pub struct Pids(Arc<Mutex<Vec<Listed>>>);

impl Pids {
    fn lock(&self) -> MutexGuard<'_, Vec<Listed>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `sig` to every child not yet reaped.
    pub fn signal_all(&self, sig: Signal) {
        for c in self.lock().iter() {
            let _ = match &c.pidfd {
                Some(fd) => fd.signal(sig),
                None => kill(Pid::from_raw(c.pid), sig),
            };
        }
    }

    /// Waits at most `limit` until every child has exited (reaped or not), so that none
    /// writes any more.
    pub fn wait_dead(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for c in self.lock().iter() {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let dead = match &c.pidfd {
                    Some(fd) => fd.wait_exit(left).unwrap_or(true),
                    None => !alive(c.pid),
                };
                if dead || left.is_zero() {
                    break;
                }
                std::thread::sleep(POLL.min(left));
            }
        }
    }
}

/// True while process `pid` runs (not gone, not a zombie); for kernels without pidfds,
/// where the list's lock keeps the pid from being reaped and reused meanwhile.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()))
        .is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

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

/// A child's reader thread: each line of its stdout as an event, then `Closed`.
fn read_lines(child: usize, stdout: std::process::ChildStdout, tx: &Sender<Event>) {
    let mut r = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).into_owned();
                if tx.send(Event::Line { child, line }).is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Event::Closed { child });
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

    /// Starts `pgbb ARGS` as a child, the password in the environment only.
    pub fn spawn(&mut self, role: &str, args: Vec<OsString>, password: Option<&str>) -> Result<usize, Error> {
        let mut cmd = Command::new(self_exe());
        cmd.args(&args);
        match password {
            Some(p) => cmd.env(PASSWORD_ENV, p),
            None => cmd.env_remove(PASSWORD_ENV),
        };
        self.start(role, cmd)
    }

    /// Starts `cmd` as a child: stdin and stdout piped (a reader thread feeds the events),
    /// own process group (a terminal's Ctrl-C reaches only the master, which then stops the
    /// children in order), SIGTERM if the master dies.
    fn start(&mut self, role: &str, mut cmd: Command) -> Result<usize, Error> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).process_group(0);
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
        let pid = child.id() as i32;
        // Not reaped yet, so the pid is still this child's.
        let pidfd = match PidFd::open(pid) {
            Ok(fd) => Some(Arc::new(fd)),
            Err(e) => {
                log::debug!("no pidfd for {role} ({e}): signalled by pid, polled every {POLL:?}");
                None
            }
        };
        self.pids.lock().push(Listed { pid, pidfd: pidfd.clone() });
        let idx = self.slots.len();
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        self.slots.push(Slot { role: role.to_string(), child, stdin, status: None, pidfd });
        log::debug!("started {role} as pid {pid}");
        let stdout = stdout.ok_or(Error::Internal("a child was started without a pipe for its stdout"))?;
        let tx = self.tx.clone();
        std::thread::Builder::new()
            .name(format!("read-{role}"))
            .spawn(move || read_lines(idx, stdout, &tx))
            .map_err(Error::Spawn)?;
        Ok(idx)
    }

    /// Writes one line to a child's stdin.
    pub fn send(&mut self, i: usize, line: &str) -> Result<(), Error> {
        let slot = &mut self.slots[i];
        let role = slot.role.clone();
        let stdin = slot.stdin.as_mut().ok_or(Error::Internal("a line was sent to a child whose input was closed"))?;
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

    /// Waits for a child that closed its stdout, at most `timeout`: blocks on its pidfd
    /// until it exits, then reaps it.
    pub fn wait(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut exit_seen = false;
        loop {
            match self.reap(i) {
                Ok(Some(s)) => return Some(s),
                Ok(None) => {}
                Err(e) => {
                    log::debug!("cannot wait for {}: {e}", self.slots[i].role);
                    return None;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.slots[i].pidfd.as_deref().map(|fd| fd.wait_exit(left)) {
                // Timed out: one last look, then `None`.
                Some(Ok(false)) => {}
                Some(Ok(true)) if !exit_seen => exit_seen = true,
                // No pidfd, or it exited but cannot be reaped yet: look again shortly.
                _ => std::thread::sleep(POLL.min(left)),
            }
        }
    }

    /// Reaps a child that has exited, under the signal list's lock: it leaves the list in
    /// the same step, so no signal can go to its pid once another process may have it.
    fn reap(&mut self, i: usize) -> std::io::Result<Option<ExitStatus>> {
        let slot = &mut self.slots[i];
        if slot.status.is_some() {
            return Ok(slot.status);
        }
        let mut listed = self.pids.lock();
        let status = slot.child.try_wait()?;
        if status.is_some() {
            slot.status = status;
            let pid = slot.child.id() as i32;
            listed.retain(|c| c.pid != pid);
        }
        Ok(status)
    }

    /// Stops every child: close their input, SIGTERM, and SIGKILL whatever is left after
    /// `grace`; reaps them all.
    pub fn stop_all(&mut self, grace: Duration) {
        for s in &mut self.slots {
            s.stdin.take();
        }
        self.pids.signal_all(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        for i in 0..self.slots.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait(i, left);
        }
        self.pids.signal_all(Signal::SIGKILL);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> (Pool, Pids) {
        let pids = Pids::default();
        (Pool::new(pids.clone()), pids)
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    /// `/proc` state letter of a process, `None` once it is reaped.
    fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
    }

    /// The system call a thread of this process is blocked in (`None` while it runs).
    fn blocked_in(tid: i32) -> Option<i64> {
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
        s.split_whitespace().next()?.parse().ok()
    }

    fn voluntary_switches() -> u64 {
        let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = s.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// While the signal thread holds the list (it signals under it), the pool may not reap
    /// a child: a reaped child's pid can be reused by any process, and a pid still listed
    /// would then be signalled.
    /// Forgets child `i`'s pidfd, as on a kernel without them.
    fn without_pidfd(pool: &mut Pool, i: usize) {
        pool.slots[i].pidfd = None;
        pool.pids.lock().iter_mut().for_each(|c| c.pidfd = None);
    }

    #[test]
    fn a_child_is_never_reaped_while_its_pid_is_listed_for_signals() {
        never_reaped_while_listed(true);
        never_reaped_while_listed(false);
    }

    fn never_reaped_while_listed(pidfd: bool) {
        let (mut pool, pids) = pool();
        let i = pool.start("child", sh("exit 3")).unwrap();
        if !pidfd {
            without_pidfd(&mut pool, i);
        }
        let pid = pool.pid(i);
        let listed = pids.lock();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let waiter = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            pool.wait(i, Duration::from_secs(30))
        });
        let tid = rx.recv().unwrap();
        // The child has exited, and the waiter waits for the list.
        let deadline = Instant::now() + Duration::from_secs(30);
        while blocked_in(tid) != Some(libc::SYS_futex) || matches!(state(pid), Some(s) if s != 'Z') {
            assert!(Instant::now() < deadline, "the waiter never blocked on the list");
            std::thread::yield_now();
        }
        assert_eq!(state(pid), Some('Z'), "child {pid} was reaped while the signal thread could still signal it");
        drop(listed);
        let status = waiter.join().unwrap().expect("the child's status");
        assert_eq!(status.code(), Some(3));
        assert_eq!(state(pid), None, "reaped once the list is free");
    }

    /// `wait` blocks until the child exits or the timeout passes, without waking up to poll.
    #[test]
    fn wait_blocks_until_exit_or_timeout() {
        let (mut pool, pids) = pool();
        let i = pool.start("sleeper", sh("exec sleep 30")).unwrap();
        let before = voluntary_switches();
        let t = Instant::now();
        assert!(pool.wait(i, Duration::from_millis(300)).is_none());
        let (took, woke) = (t.elapsed(), voluntary_switches() - before);
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "took {took:?}");
        assert!(woke < 5, "woke up {woke} times in 300 ms: it polls");
        pool.stop_all(Duration::from_secs(5));
        assert_eq!(pool.wait(i, Duration::ZERO).and_then(|s| s.signal()), Some(libc::SIGTERM));
        assert!(pids.lock().is_empty());

        let j = pool.start("quick", sh("sleep 0.2; exit 4")).unwrap();
        let t = Instant::now();
        assert_eq!(pool.wait(j, Duration::from_secs(30)).and_then(|s| s.code()), Some(4));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// Without pidfds the same timeouts hold, and signals go by pid to children not reaped.
    #[test]
    fn without_pidfds_waits_and_signals_still_work() {
        let (mut pool, pids) = pool();
        let i = pool.start("sleeper", sh("exec sleep 30")).unwrap();
        without_pidfd(&mut pool, i);
        let t = Instant::now();
        assert!(pool.wait(i, Duration::from_millis(200)).is_none());
        assert!(t.elapsed() >= Duration::from_millis(200) && t.elapsed() < Duration::from_secs(2));
        pids.signal_all(Signal::SIGKILL);
        assert_eq!(pool.wait(i, Duration::from_secs(30)).and_then(|s| s.signal()), Some(libc::SIGKILL));
        assert!(pids.lock().is_empty());
        pids.wait_dead(Duration::from_secs(1));
    }
}
