//! What the master does with its signals and its output streams: a signal ignored at start
//! (nohup) stays ignored, a closed stdout never fails a good backup, and the summary it prints
//! is right and can be pasted into a shell.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::unistd::Pid;

use crate::faults::{start_slow, workers_running};
use crate::harness::*;

/// A slow backup started with SIGHUP ignored, as `nohup` starts it.
fn start_slow_under_nohup(c: &Cluster, name: &str) -> (std::process::Child, std::path::PathBuf) {
    let dest = c.path(name);
    let mut cmd = pgbb();
    cmd.args(["-j", "2", "-c", "fast", "--chunk-size", "8k", "--compress", "none"])
        .arg(c.dsn())
        .arg(&dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only signal(2), async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| signal(Signal::SIGHUP, SigHandler::SigIgn).map(drop).map_err(std::io::Error::from));
    }
    (cmd.spawn().unwrap(), dest)
}

#[test]
fn sighup_ignored_at_start_stays_ignored() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let (mut child, dest) = start_slow_under_nohup(&c, "nohup");
    workers_running(&dest);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).unwrap();
    let (status, _) = wait_exit(&mut child, Duration::from_secs(300));
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(0), "a SIGHUP ignored at start must not abort: {}", stderr(&out));
    assert!(!stderr(&out).contains("SIGHUP"), "{}", stderr(&out));
    verifybackup(&dest, &[]);
    c.assert_no_pgbb_left();
}

#[test]
fn sighup_not_ignored_aborts_with_129() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let (mut child, dest) = start_slow(&c, "hup", &[]);
    workers_running(&dest);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).unwrap();
    wait_exit(&mut child, Duration::from_secs(10));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(129), "128 + SIGHUP: {}", stderr(&out));
    assert!(stderr(&out).contains("interrupted by SIGHUP"), "{}", stderr(&out));
    assert_no_pgbb_process(dest.to_str().unwrap());
    c.assert_no_pgbb_left();
    assert!(!dest.exists());
}

/// `pgbb … | head`: stdout is a pipe nobody reads any more.
#[test]
fn closed_stdout_does_not_fail_a_good_backup() {
    let c = Cluster::new();
    c.pgbench_init(1);
    let dest = c.path("closed-stdout");
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = pgbb()
        .args(["-c", "fast", &c.dsn(), dest.to_str().unwrap()])
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    verifybackup(&dest, &[]);
}

fn count(dir: &std::path::Path, f: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir(dir).unwrap().flatten().filter(|e| f(&e.file_name().to_string_lossy())).count()
}

/// On timeline 2 the WAL child also copies 00000002.history: it is not a segment.
#[test]
fn summary_counts_segments_and_history_files_apart() {
    let mut c = Cluster::new();
    c.stop();
    std::fs::write(c.data.join("standby.signal"), "").unwrap();
    chown_pg(&c.data);
    c.start();
    run_ok(as_pg(&bin_dir().join("pg_ctl")).arg("-D").arg(&c.data).args(["-w", "promote"]));
    let dest = c.path("tli2");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let wal = dest.join("pg_wal");
    let segments = count(&wal, |n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()));
    let history = count(&wal, |n| n.ends_with(".history"));
    assert_eq!(history, 1, "the backup of timeline 2 has its history file");
    let text = stdout(&out);
    let want = format!("({segments} segment{}, 1 history file)", if segments == 1 { "" } else { "s" });
    assert!(text.contains(&format!("on timeline 2 {want}")), "expected {want}: {text}");
}

/// The printed commands work when pasted into a shell, whatever DEST's name.
#[test]
fn printed_commands_are_quoted_for_the_shell() {
    let c = Cluster::new();
    // A space and a quote. (Not `"` or `$`, though quoted as well (unit tests): pg_verifybackup
    // itself runs pg_waldump through a shell with the path in double quotes.)
    let dest = c.path("it's a backup");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line: {text}"))
            .to_string()
    };
    let verify = line("pgbb: verify it with: ");
    let path =
        format!("{}:{}", client_bin("pg_verifybackup").parent().unwrap().display(), std::env::var("PATH").unwrap());
    let res = Command::new("sh").arg("-c").arg(&verify).env("PATH", path).output().unwrap();
    assert!(res.status.success(), "`{verify}` failed in sh: {}", String::from_utf8_lossy(&res.stderr));
    // pg_ctl is not run (it refuses root); its arguments, as sh splits them, are.
    let start = line("pgbb: start it with: ");
    let args = start.strip_prefix("pg_ctl ").expect("pg_ctl command");
    let res = Command::new("sh").arg("-c").arg(format!("printf '%s\\n' {args}")).output().unwrap();
    assert_eq!(stdout(&res), format!("-D\n{}\nstart\n", dest.display()), "`{start}`");
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}
