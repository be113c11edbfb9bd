//! The fault matrix (docs/reliability.md): each row kills, cuts or starves a running backup
//! and checks that pgbb keeps its word — the documented exit status, one message naming the
//! first cause, no pgbb process left, nothing of pgbb left on the server, and no DEST that
//! could be started.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

/// A backup slow enough to be interrupted: small chunks, no compression.
pub fn start_slow(c: &Cluster, name: &str, extra: &[&str]) -> (Child, std::path::PathBuf) {
    let dest = c.path(name);
    let child = pgbb()
        .args(["-j", "2", "-c", "fast", "--chunk-size", "8k", "--compress", "none"])
        .args(extra)
        .arg(c.dsn())
        .arg(&dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, dest)
}

/// What every row asserts after the failure; returns stderr.
fn assert_failed_cleanly(c: &Cluster, child: Child, dest: &std::path::Path, code: i32, cause: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "exit status: {err}");
    assert!(err.contains(cause), "the message should name {cause:?}: {err}");
    assert_eq!(err.matches("pgbb: error:").count(), 1, "one error message: {err}");
    assert!(!stdout(&out).contains("backup complete"));
    assert_no_pgbb_process(dest.to_str().unwrap());
    c.assert_no_pgbb_left();
    assert!(!dest.join("global/pg_control").exists(), "an incomplete DEST must never be startable");
    err
}

/// Waits until the workers run and the copy is under way (a data file is in DEST): the
/// workers start before the master has listed anything.
pub fn workers_running(dest: &std::path::Path) -> i32 {
    let pid = wait_for_proc(&["--stdin", "--worker-id 2", dest.to_str().unwrap()], Duration::from_secs(30))
        .expect("no worker appeared");
    wait_until_copying(dest);
    pid
}

/// SIGINT while a copy of over 10k files runs, with DEST synced in the background
/// (`src/flusher.rs`): the abort does not wait for the background thread beyond its sync in
/// progress, and leaves nothing behind, as any other abort.
#[test]
fn f03_sigint_while_small_files_sync_in_the_background() {
    let c = Cluster::new();
    crate::batch::tiny_tables(&c, "s", 2600);
    let (mut child, dest) = start_slow(&c, "f03bg", &["-v"]);
    workers_running(&dest);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let (_, took) = wait_exit(&mut child, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "orderly abort took {took:?}");
    let err = assert_failed_cleanly(&c, child, &dest, 130, "interrupted by SIGINT");
    assert!(err.contains("syncing DEST in the background"), "the background sync ran: {err}");
    assert!(!dest.exists());
}

#[test]
fn f02_sigkill_of_the_wal_child() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let (child, dest) = start_slow(&c, "f02", &[]);
    let wal = wait_for_proc(&["--slave", "-x", dest.to_str().unwrap()], Duration::from_secs(30)).expect("no WAL child");
    kill(Pid::from_raw(wal), Signal::SIGKILL).unwrap();
    assert_failed_cleanly(&c, child, &dest, 1, "WAL child died unexpectedly (killed by SIGKILL)");
    assert!(!dest.exists());
}

#[test]
fn f03_sigint_aborts_in_order_and_a_second_one_kills_at_once() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let (mut child, dest) = start_slow(&c, "f03", &[]);
    workers_running(&dest);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let (_, took) = wait_exit(&mut child, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "orderly abort took {took:?}");
    assert_failed_cleanly(&c, child, &dest, 130, "interrupted by SIGINT");
    assert!(!dest.exists());

    // Twice: the children are killed and pgbb exits at once. A frozen worker would keep the
    // orderly abort waiting (2 s, then SIGKILL): only the second SIGINT ends it at once.
    let (mut child, dest) = start_slow(&c, "f03b", &[]);
    let worker = workers_running(&dest);
    kill(Pid::from_raw(worker), Signal::SIGSTOP).unwrap();
    let (status, err) = sigint_twice(&mut child);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("killed by a second SIGINT"), "{err}");
    assert_no_pgbb_process(dest.to_str().unwrap());
    c.assert_no_pgbb_left();
    assert!(!dest.join("global/pg_control").exists());
}

/// Sends the master SIGINT twice, the second once the first has been taken (two signals of
/// one kind sent back to back may arrive as one), and waits for it to exit, at once after
/// the second: returns its status and stderr.
fn sigint_twice(child: &mut Child) -> (std::process::ExitStatus, String) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("pgbb did not take the first SIGINT");
        if line.contains("SIGINT received: aborting") {
            break;
        }
    }
    kill(pid, Signal::SIGINT).unwrap();
    let (status, took) = wait_exit(child, Duration::from_secs(10));
    let err = reader.join().unwrap();
    assert!(took < Duration::from_secs(2), "a second SIGINT should kill at once, took {took:?}: {err}");
    (status, err)
}

/// Two SIGINTs in a late step: the backup has stopped (backup_label is in DEST) and the
/// master waits for its frozen WAL child. The children are killed, DEST is removed once the
/// master's change in progress (if any) is done, and pgbb exits 130 at once.
#[test]
fn f03_two_sigints_after_the_stop_remove_dest_and_exit_at_once() {
    let c = Cluster::new();
    c.pgbench_init(1);
    let dest = c.path("f03c");
    let mut child = spawn_pgbb(&["-j", "2", "-c", "fast"], &c.dsn(), &dest);
    freeze_wal_child_until_stopped(&dest);
    // At once: not after the 2 s the master would give its frozen child before killing it.
    let (status, err) = sigint_twice(&mut child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let removed = format!("killed by a second SIGINT; the incomplete backup in {} was removed", dest.display());
    assert!(err.contains(&removed), "{err}");
    assert!(!stdout(&out).contains("backup complete"));
    assert_no_pgbb_process(dest.to_str().unwrap());
    c.assert_no_pgbb_left();
    assert!(!dest.exists(), "DEST should be gone");
}

#[test]
fn f04_sigterm_to_the_master() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let (mut child, dest) = start_slow(&c, "f04", &["--no-clean"]);
    workers_running(&dest);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let (_, took) = wait_exit(&mut child, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "abort took {took:?}");
    assert_failed_cleanly(&c, child, &dest, 143, "interrupted by SIGTERM");
    assert!(dest.join("base").exists(), "--no-clean keeps DEST");
}

#[test]
fn f05_sigkill_of_the_master_stops_the_children_and_the_server_ends_the_backup() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let (mut child, dest) = start_slow(&c, "f05", &[]);
    workers_running(&dest);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    let t = Instant::now();
    assert_no_pgbb_process(dest.to_str().unwrap());
    assert!(t.elapsed() < Duration::from_secs(5), "children took {:?} to go", t.elapsed());
    c.assert_no_pgbb_left();
    // The server ended the backup: a new one can start, and none is in progress.
    assert!(!dest.join("global/pg_control").exists(), "the master never put pg_control in place");
    let again = c.path("f05-again");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), again.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A worker's backend terminated mid-transfer no longer fails the backup: the worker
/// reconnects and copies its file again (tests/it/retry.rs has the cases under load, during
/// `--delta`, and when reconnecting keeps failing).
#[test]
fn f06_a_workers_backend_terminated_mid_transfer() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let (child, dest) = start_slow(&c, "f06", &[]);
    workers_running(&dest);
    let mut cl = c.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = cl
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'pgbb worker 1 [run %' AND state = 'active'",
                &[],
            )
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "worker 1 never seen active");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // The victim says what happened, although the server's own words are lost when it ends
    // a session in the middle of sending a row, and that it reconnected.
    assert!(err.contains("the server ended this session") && err.contains("terminated it"), "{err}");
    assert!(err.contains("reconnected to the server; copying it again"), "{err}");
    verifybackup(&dest, &[]);
    c.assert_no_pgbb_left();
}

#[test]
fn f07_the_server_stopped_mid_backup() {
    let mut c = Cluster::new();
    c.pgbench_init(10);
    let (child, dest) = start_slow(&c, "f07", &[]);
    workers_running(&dest);
    c.wait_for_session("pgbb worker 1");
    c.wait_for_session("pgbb worker 2");
    c.stop();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("terminating connection due to administrator command")
            || err.contains("the server closed the connection unexpectedly"),
        "{err}"
    );
    assert_eq!(err.matches("pgbb: error:").count(), 1, "{err}");
    assert_no_pgbb_process(dest.to_str().unwrap());
    assert!(!dest.exists());
    c.start();
    c.assert_no_pgbb_left();
}

/// A size-limited tmpfs, unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn f09_dest_fills_up() {
    if !is_root() {
        eprintln!("SKIPPED f09_dest_fills_up: mounting a tmpfs needs root");
        return;
    }
    let c = Cluster::new();
    c.pgbench_init(10);
    let mnt = c.path("small");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"]).arg(&mnt));
    let fs = SmallFs(mnt.clone());
    let dest = mnt.join("dest");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("no space left on device while writing") && err.contains(mnt.to_str().unwrap()), "{err}");
    assert_eq!(err.matches("pgbb: error:").count(), 1, "{err}");
    assert_no_pgbb_process(dest.to_str().unwrap());
    c.assert_no_pgbb_left();
    assert!(!dest.exists());
    drop(fs);
}

/// Freezes the WAL child until the backup has stopped, then has the server recycle the
/// backup's first segment (no slot, small max_wal_size, switches and checkpoints).
fn starve_wal(c: &Cluster, dest: &std::path::Path) -> String {
    let (wal, seg) = freeze_wal_child_until_stopped(dest);
    let mut cl = c.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.data.join("pg_wal").join(&seg).exists() {
        assert!(Instant::now() < deadline, "the server kept {seg}");
        cl.batch_execute("INSERT INTO churn SELECT generate_series(1, 1000)").unwrap();
        cl.batch_execute("SELECT pg_switch_wal()").unwrap();
        cl.batch_execute("CHECKPOINT").unwrap();
    }
    kill(Pid::from_raw(wal), Signal::SIGCONT).unwrap();
    seg
}

/// A small cluster whose WAL is recycled quickly (`max_wal_size = 32MB` plus `setting`), a
/// backup into DEST `name` with `args` whose WAL child is starved ([`starve_wal`]).
fn starved_backup(name: &str, setting: &str, args: &[&str]) -> (Cluster, Child, std::path::PathBuf, String) {
    let c = Cluster::with(ClusterOpts {
        checksums: true,
        conf: vec!["max_wal_size = 32MB".into(), "min_wal_size = 32MB".into(), setting.into()],
        ..Default::default()
    });
    c.pgbench_init(2);
    c.client().batch_execute("CREATE TABLE churn (x int)").unwrap();
    let dest = c.path(name);
    let child = spawn_pgbb(args, &c.dsn(), &dest);
    let seg = starve_wal(&c, &dest);
    (c, child, dest, seg)
}

#[test]
fn f10_wal_recycled_before_it_was_copied() {
    let (c, child, dest, seg) = starved_backup("f10", "wal_keep_size = 0", &["-j", "1", "-c", "fast", "--no-slot"]);
    let err = assert_failed_cleanly(&c, child, &dest, 1, "WAL needed to restore the backup is missing");
    assert!(err.contains(&seg), "{err}");
    assert!(!dest.exists());
}

#[test]
fn f11_slot_invalidated_by_max_slot_wal_keep_size() {
    let (c, child, dest, _) = starved_backup("f11", "max_slot_wal_keep_size = 1MB", &["-j", "1", "-c", "fast"]);
    assert_failed_cleanly(&c, child, &dest, 1, "was invalidated during the backup");
    assert!(!dest.exists());
}

#[test]
fn f08_the_network_path_cut_mid_transfer() {
    if !is_root() {
        eprintln!("SKIPPED f08_the_network_path_cut_mid_transfer: network namespaces need root");
        return;
    }
    let ns = NetNs::new(77);
    let mut c = Cluster::with(ClusterOpts {
        checksums: true,
        conf: vec![
            // The server side gives up on the dead peer quickly too.
            "tcp_keepalives_idle = 5".into(),
            "tcp_keepalives_interval = 2".into(),
            "tcp_keepalives_count = 2".into(),
            "tcp_user_timeout = 10000".into(),
        ],
        netns: Some((ns.name.clone(), ns.server_addr())),
        ..Default::default()
    });
    let dsn = ns.open_to(&c);
    c.pgbench_init(10);
    let dest = c.path("f08");
    // Slow enough (tiny chunks) that the cut lands mid-transfer.
    let child = pgbb()
        .args(["-j", "2", "-c", "fast", "--chunk-size", "8k", "--compress", "none"])
        .arg(&dsn)
        .arg(&dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    workers_running(&dest);
    // Both workers copy over the link when it is cut.
    c.wait_for_session("pgbb worker 1");
    c.wait_for_session("pgbb worker 2");
    ns.link(false);
    let t = Instant::now();
    let mut child = child;
    let (_, took) = wait_exit(&mut child, Duration::from_secs(90));
    // Keepalives: 10 s idle, then 3 probes 5 s apart (docs/reliability.md).
    assert!(took < Duration::from_secs(60), "a cut network took {took:?} to become an error");
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the server closed the connection unexpectedly") || err.contains("timed out"), "{err}");
    assert_eq!(err.matches("pgbb: error:").count(), 1, "{err}");
    assert_no_pgbb_process(dest.to_str().unwrap());
    assert!(!dest.exists());
    eprintln!("network cut detected after {:?}", t.elapsed());
    // Back up: the server has dropped every pgbb session and the slot.
    ns.link(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.count_pgbb_sessions() + c.count_pgbb_slots() > 0 {
        assert!(Instant::now() < deadline, "the server kept pgbb sessions after the cut");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.stop();
}

#[test]
fn unreachable_host_times_out_with_a_clear_error() {
    if !is_root() {
        eprintln!("SKIPPED unreachable_host_times_out_with_a_clear_error: network namespaces need root");
        return;
    }
    let ns = NetNs::new(78);
    ns.drop_replies();
    let addr = ns.server_addr();
    // The setup really drops: a plain connect gets no answer (a refusal or an unreachable
    // network would come back at once and leave the timeout untested).
    let sock: std::net::SocketAddr = format!("{addr}:5432").parse().unwrap();
    let probe = std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(500)).map(drop);
    assert_eq!(probe.as_ref().map_err(|e| e.kind()), Err(std::io::ErrorKind::TimedOut), "{probe:?}");
    let dest = std::env::temp_dir().join(format!("pgbb-unreachable-{}", std::process::id()));
    let timeout = Duration::from_secs(3);
    let t = Instant::now();
    let dsn = format!("host={addr} port=5432 user=postgres connect_timeout={}", timeout.as_secs());
    let out = pgbb_run(&[&dsn, dest.to_str().unwrap()]);
    let took = t.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("could not connect to host \"{addr}\"")) && err.contains("connection timed out"),
        "{err}"
    );
    assert!(took >= timeout, "gave up after {took:?}, before connect_timeout ({timeout:?}) ran out: {err}");
    assert!(took < timeout + Duration::from_secs(5), "took {took:?} for a {timeout:?} connect_timeout");
    assert!(!dest.exists());
}

/// A SIGINT whose cancel request the server drops (it reached the master's session between
/// two messages: before a statement, or, here, between the Parse of pg_backup_start and its
/// Execute) does not leave the statement running: pgbb sends the request again until the
/// statement returns. Without that, the spread checkpoint of an hour below kept pgbb waiting.
#[test]
fn f03_a_cancel_request_the_server_dropped_is_sent_again() {
    let c = Cluster::with(ClusterOpts { listen: Some("127.0.0.1".into()), ..Default::default() });
    spread_checkpoint_of_an_hour(&c);
    let proxy = HoldProxy::to(c.port, b"pg_backup_start(");
    let dsn = format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable", proxy.port);
    let dest = c.path("dropped-cancel");
    let mut child = spawn_pgbb(&["-c", "spread"], &dsn, &dest);
    proxy.held.recv_timeout(Duration::from_secs(60)).expect("pgbb never sent pg_backup_start");
    // The session now waits for the statement's Bind, which the proxy holds until the server
    // has handled the first cancel request (and dropped it, the session being between
    // messages).
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let (status, took) = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130));
    assert!(took < Duration::from_secs(15), "the abort took {took:?}");
    assert!(proxy.cancels.load(std::sync::atomic::Ordering::SeqCst) >= 2, "the cancel request was sent once");
    assert!(c.log().contains("canceling statement due to user request"), "{}", c.log());
    assert!(!dest.exists());
    c.assert_no_pgbb_left();
}

/// A TCP proxy to a local port that holds the Bind that follows the Parse of a statement
/// containing `marker` until a cancel request has gone through it and the server has handled
/// it (closed that connection). Reports on `held` when it starts holding. Stopped when dropped.
struct HoldProxy {
    port: u16,
    held: crossbeam_channel::Receiver<()>,
    cancels: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The protocol code of a CancelRequest packet.
const CANCEL_REQUEST: u32 = 80877102;

impl HoldProxy {
    fn to(upstream: u16, marker: &'static [u8]) -> HoldProxy {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (held_tx, held) = crossbeam_channel::unbounded();
        let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
        let proxy = HoldProxy {
            port: listener.local_addr().unwrap().port(),
            held,
            cancels: Default::default(),
            stop: Default::default(),
        };
        let (cancels, stop) = (proxy.cancels.clone(), proxy.stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let (cancels, held_tx, release_tx, release_rx) =
                    (cancels.clone(), held_tx.clone(), release_tx.clone(), release_rx.clone());
                std::thread::spawn(move || {
                    let _ = hold_proxy_conn(client, upstream, marker, &cancels, &held_tx, &release_tx, &release_rx);
                });
            }
        });
        proxy
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One connection through a [`HoldProxy`]: a cancel request is passed on and, once the
/// server has closed it, releases a held Bind; any other connection is passed on message by
/// message, the first Bind after a Parse containing `marker` held until that release.
fn hold_proxy_conn(
    mut client: std::net::TcpStream,
    upstream: u16,
    marker: &[u8],
    cancels: &std::sync::atomic::AtomicUsize,
    held_tx: &crossbeam_channel::Sender<()>,
    release_tx: &crossbeam_channel::Sender<()>,
    release_rx: &crossbeam_channel::Receiver<()>,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut server = std::net::TcpStream::connect(("127.0.0.1", upstream))?;
    let mut head = [0u8; 8];
    client.read_exact(&mut head)?;
    let len = u32::from_be_bytes(head[0..4].try_into().unwrap()) as usize;
    let mut startup = vec![0u8; len - 8];
    client.read_exact(&mut startup)?;
    server.write_all(&head)?;
    server.write_all(&startup)?;
    if u32::from_be_bytes(head[4..8].try_into().unwrap()) == CANCEL_REQUEST {
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest);
        cancels.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = release_tx.send(());
        return Ok(());
    }
    let (mut c2, mut s2) = (client.try_clone()?, server.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut s2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Both);
    });
    let mut armed = false;
    loop {
        let mut kind = [0u8; 5];
        if client.read_exact(&mut kind).is_err() {
            let _ = server.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        let len = u32::from_be_bytes(kind[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        client.read_exact(&mut body)?;
        if kind[0] == b'P' && body.windows(marker.len()).any(|w| w == marker) {
            armed = true;
        }
        if kind[0] == b'B' && armed {
            armed = false;
            let _ = held_tx.send(());
            let _ = release_rx.recv_timeout(Duration::from_secs(60));
        }
        server.write_all(&kind)?;
        server.write_all(&body)?;
    }
}
