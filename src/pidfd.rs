//! Linux process file descriptors (5.3+): a handle on one process that a reused pid cannot
//! alias (`pidfd_open`, `pidfd_send_signal`, from rustix: nix has neither), and waiting for its
//! exit with poll(2).

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

#[derive(Debug)]
pub struct PidFd(OwnedFd);

/// rustix's error as nix's (the rest of pgbb speaks nix).
fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

impl PidFd {
    /// A handle on process `pid`. Open it on a child not yet reaped: until it is, the pid
    /// cannot name another process.
    pub fn open(pid: i32) -> Result<PidFd, Errno> {
        let pid = Some(pid).filter(|&p| p > 0).and_then(rustix::process::Pid::from_raw).ok_or(Errno::EINVAL)?;
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map(PidFd).map_err(errno)
    }

    /// Sends `sig` to the process; `ESRCH` once it has exited, whatever process has its pid
    /// by then.
    pub fn signal(&self, sig: Signal) -> Result<(), Errno> {
        let sig = rustix::process::Signal::from_named_raw(sig as i32).ok_or(Errno::EINVAL)?;
        rustix::process::pidfd_send_signal(&self.0, sig).map_err(errno)
    }

    /// Blocks until the process has exited (it may still need reaping) or `timeout` has
    /// passed; true if it has exited.
    pub fn wait_exit(&self, timeout: Duration) -> Result<bool, Errno> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Rounded up: poll counts whole milliseconds, and must not return early.
            let ms = left.as_nanos().div_ceil(1_000_000);
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
                Ok(n) if n > 0 => return Ok(true),
                Ok(_) if Instant::now() >= deadline => return Ok(false),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// True once the process has exited (without waiting).
    pub fn exited(&self) -> bool {
        self.wait_exit(Duration::ZERO).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    #[test]
    fn signal_wait_and_a_reaped_process() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let fd = PidFd::open(child.id() as i32).unwrap();
        assert!(!fd.exited());
        let t = Instant::now();
        assert_eq!(fd.wait_exit(Duration::from_millis(100)), Ok(false));
        assert!(t.elapsed() >= Duration::from_millis(100));
        fd.signal(Signal::SIGTERM).unwrap();
        assert_eq!(fd.wait_exit(Duration::from_secs(30)), Ok(true));
        // Exited but not reaped: still a zombie, still ours.
        assert!(fd.exited());
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
        // Reaped: the descriptor still names that process, never whatever has its pid now.
        assert_eq!(fd.signal(Signal::SIGKILL), Err(Errno::ESRCH));
        assert!(fd.exited());
        assert_eq!(PidFd::open(-5).map(drop), Err(Errno::EINVAL));
    }
}
