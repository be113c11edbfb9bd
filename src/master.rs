//! The master role (`pgbb DSN DEST`): holds the backup session, lists the data directory,
//! hands files to workers as they become free, copies pg_control last, stops the backup,
//! checks the WAL range and finishes DEST.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossbeam_channel::select;

use crate::cli::{Common, Compress, MasterOpts};
use crate::dest::{Dest, Roots, SafePath, PG_CONTROL, PG_CONTROL_PENDING};
use crate::dest_safety;
use crate::digest::{Algorithm, Checksum, Digest};
use crate::error::Error;
use crate::guard::DestGuard;
use crate::layout::{self, FileJob};
use crate::lsn::{Lsn, WalGeometry};
use crate::manifest::{self, FileEntry, WalRange};
use crate::pg::caps::Support;
use crate::pg::{run, sql, PgError, Session};
use crate::pool::{describe_status, Event, Pool};
use crate::progress::Progress;
use crate::protocol::{show, Request, Response, WalCommand, PROTOCOL_VERSION};
use crate::recovery;
use crate::signals::{self, Interrupt};
use crate::tablespace;
use crate::transfer::Method;

/// Requests in flight per worker: one being copied and one queued, so a worker never waits
/// for the master between two files.
const PIPELINE: usize = 2;

/// What a finished backup looked like.
#[derive(Debug)]
pub struct Summary {
    pub files: u64,
    pub bytes: u64,
    pub vanished: u64,
    /// WAL segments copied.
    pub wal_files: u64,
    /// Timeline history files copied (not segments).
    pub wal_history: u64,
    pub start: Lsn,
    pub stop: Lsn,
    pub timeline: u32,
    pub elapsed: Duration,
    pub method: Method,
    /// Data pages whose checksum failed twice (the backup is kept; exit status 6).
    pub bad_pages: u64,
    /// Data pages whose checksum was compared (0 when pages are not verified).
    pub verified_pages: u64,
    pub manifest: bool,
    /// Bytes that came over the network for the data files (`bytes` when uncompressed).
    pub wire: u64,
}

struct WorkerState {
    idx: usize,
    ready: bool,
    inflight: VecDeque<Work>,
    finished: bool,
}

/// One request for a worker: a whole file, or one piece of a large one.
#[derive(Debug, Clone)]
struct Work {
    path: Vec<u8>,
    range: Option<(u64, u64)>,
}

/// Files at least this large are split into pieces of [`PIECE`] bytes, copied by several
/// workers at once (one big table otherwise bounds the backup by one worker's speed).
const SPLIT_FROM: u64 = 128 << 20;
const PIECE: u64 = 64 << 20;

/// The work queue: largest file first, large files as pieces. Pieces need a checksum that
/// combines (CRC-32C or none), and a UTF-8 name.
fn work_queue(files: &[FileJob], jobs: usize, algorithm: Algorithm) -> VecDeque<Work> {
    let split = jobs > 1 && matches!(algorithm, Algorithm::Crc32c | Algorithm::None);
    let mut q = VecDeque::new();
    for f in files {
        if split && f.size >= SPLIT_FROM && std::str::from_utf8(&f.path).is_ok() {
            let mut off = 0;
            while off < f.size {
                let len = PIECE.min(f.size - off);
                q.push_back(Work { path: f.path.clone(), range: Some((off, len)) });
                off += len;
            }
        } else {
            q.push_back(Work { path: f.path.clone(), range: None });
        }
    }
    q
}

/// The pieces of one file as they come in.
#[derive(Default)]
struct Assembly {
    expected: usize,
    size: u64,
    mtime: i64,
    vanished: bool,
    got: Vec<Piece>,
}

/// One piece of a large file as a worker wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    off: u64,
    /// As asked.
    len: u64,
    /// As written: fewer than `len` when the file had shrunk by the time the piece was read
    /// (the rest stays zeros: the file is completed to its listed size, as core does).
    written: u64,
    checksum: Option<Checksum>,
}

/// CRC-32C of `n` zero bytes.
fn crc_of_zeros(mut n: u64) -> u32 {
    static ZEROS: [u8; 65536] = [0; 65536];
    let mut crc = 0;
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        crc = crc32c::crc32c_append(crc, &ZEROS[..k]);
        n -= k as u64;
    }
    crc
}

/// CRC-32C of a whole file from its pieces' (in offset order), each followed by the zeros
/// that complete a short one; `None` without checksums.
fn combine_crc(pieces: &mut [Piece]) -> Option<Checksum> {
    pieces.sort_by_key(|p| p.off);
    let mut acc: Option<u32> = None;
    let mut add = |crc: u32, len: u64| {
        acc = Some(match acc {
            None => crc,
            Some(a) => crc32c::crc32c_combine(a, crc, len as usize),
        });
    };
    for p in pieces.iter() {
        add(p.checksum.as_ref()?.crc32c()?, p.written);
        if p.written < p.len {
            add(crc_of_zeros(p.len - p.written), p.len - p.written);
        }
    }
    acc.map(Checksum::Crc32c)
}

/// The first error wins; a signal overrides whatever it caused.
fn first_cause(e: Error, interrupt: &Interrupt, sig: Option<&'static str>) -> Error {
    if interrupt.requested() {
        return Error::Interrupted(sig.unwrap_or("SIGINT"));
    }
    e
}

pub fn run(common: &Common, opts: &MasterOpts) -> Result<Summary, Error> {
    let pids = crate::pool::Pids::default();
    let (interrupt, sig_rx) = signals::install(pids.clone())?;
    let t0 = Instant::now();
    let mut sig: Option<&'static str> = None;
    let r = backup(common, opts, &interrupt, &sig_rx, pids, t0, &mut sig);
    r.map_err(|e| first_cause(e, &interrupt, sig.or_else(|| sig_rx.try_recv().ok())))
}

fn check_server(ctl: &mut Session, common: &Common) -> Result<sql::ServerInfo, Error> {
    let (caps, version) = sql::version(ctl)?;
    match caps.support() {
        Support::TooOld => return Err(PgError::TooOld(version).into()),
        Support::BestEffort => {
            log::warn!("PostgreSQL {version} is supported on a best-effort basis; 14 to 18 are tested")
        }
        Support::Untested => {
            log::warn!("PostgreSQL {version} is newer than pgbb knows (18); proceeding")
        }
        Support::Supported => {}
    }
    sql::session_setup_for(ctl, caps)?;
    let info = sql::server_info(ctl, caps, version)?;
    if info.wal_level == "minimal" {
        return Err(PgError::WalLevel(info.wal_level).into());
    }
    if !info.superuser {
        let missing = sql::missing_function_privileges(ctl, &caps.needed_functions())?;
        if !missing.is_empty() {
            let grants = missing
                .iter()
                .map(|f| format!("  GRANT EXECUTE ON FUNCTION {f} TO \"{}\";", info.current_user))
                .collect::<Vec<_>>()
                .join("\n");
            return Err(
                PgError::Privileges { role: info.current_user.clone(), db: info.database.clone(), grants }.into()
            );
        }
    }
    log::info!("connected to PostgreSQL {} at {}", info.version, common.conn.target());
    Ok(info)
}

/// Takes this run's advisory lock on the master's session, then names the session after the
/// run: from here on a `pgbb --clean` elsewhere leaves every session of this run alone, and
/// a session named after a run whose lock is free is a leftover (see [`sql::clean_leftovers`]).
/// With `--clean` (`clean`), then ends such leftovers.
fn claim_run(ctl: &mut Session, clean: bool) -> Result<i32, Error> {
    for _ in 0..8 {
        let key = run::new_key();
        // Taken by a live run (a chance in 2^31): draw again.
        if sql::lock_run(ctl, key)? {
            sql::set_application_name(ctl, &run::session_name("pgbb", Some(key)))?;
            log::debug!("run key {key}");
            if clean {
                clean_leftovers(ctl)?;
            }
            return Ok(key);
        }
    }
    Err(PgError::Unsupported("could not take a pgbb run lock: every key drawn was held".into()).into())
}

/// `--clean`: ends what runs whose master is gone left behind, and says what it left alone.
fn clean_leftovers(ctl: &mut Session) -> Result<(), Error> {
    let c = sql::clean_leftovers(ctl)?;
    log::warn!("--clean: terminated {} session(s) of pgbb runs whose master is gone", c.terminated);
    if c.live > 0 {
        log::info!("--clean: left alone {} session(s) of pgbb runs in progress (their master holds its lock)", c.live);
    }
    if c.unkeyed > 0 {
        log::info!(
            "--clean: left alone {} pgbb session(s) that belong to no backup run (a worker started by hand, \
             --check, pgbb -x, or an older pgbb); end them with pg_terminate_backend if they are leftovers",
            c.unkeyed
        );
    }
    Ok(())
}

fn choose_method(ctl: &mut Session, c: Compress, local: bool, in_recovery: bool) -> Result<Method, Error> {
    match c {
        Compress::Fixed(Method::Plain) => {
            log::info!("chunks travel uncompressed (--compress=none)");
            Ok(Method::Plain)
        }
        // Installing plpython3u or connecting as a superuser would not help here.
        Compress::Fixed(Method::Zlib(_)) if in_recovery => {
            Err(PgError::Unsupported(format!("--compress zlib: {}", sql::READ_ONLY_NO_COMPRESSION)).into())
        }
        Compress::Fixed(Method::Zlib(l)) => match sql::compression_available(ctl)? {
            Ok(()) => Ok(Method::Zlib(l)),
            Err(why) => Err(PgError::Compression(why).into()),
        },
        Compress::Auto(_) if in_recovery => {
            log::info!(
                "chunks travel uncompressed (the server is in recovery: a standby cannot hold the compression helper)"
            );
            Ok(Method::Plain)
        }
        // Measured on loopback (docs/benchmarks.md): zlib costs the server more CPU than it
        // saves, so a server on this machine gets plain chunks unless zlib is asked for.
        Compress::Auto(_) if local => {
            log::info!("chunks travel uncompressed (the server is on this machine; --compress zlib forces it)");
            Ok(Method::Plain)
        }
        Compress::Auto(l) => match sql::compression_available(ctl)? {
            Ok(()) => Ok(Method::Zlib(l)),
            Err(why) => {
                log::info!("chunks travel uncompressed: {why}");
                Ok(Method::Plain)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_files_are_split_only_when_it_can_pay() {
        let files = vec![
            FileJob { path: b"base/5/big".to_vec(), size: 200 << 20 },
            FileJob { path: b"base/5/small".to_vec(), size: 8192 },
        ];
        let q = work_queue(&files, 2, Algorithm::Crc32c);
        let r: Vec<_> = q.iter().map(|w| w.range).collect();
        assert_eq!(
            r,
            vec![
                Some((0, 64 << 20)),
                Some((64 << 20, 64 << 20)),
                Some((128 << 20, 64 << 20)),
                Some((192 << 20, 8 << 20)),
                None
            ]
        );
        assert_eq!(work_queue(&files, 1, Algorithm::Crc32c).len(), 2, "one worker: no pieces");
        assert_eq!(work_queue(&files, 2, Algorithm::Sha256).len(), 2, "SHA-2 does not combine: no pieces");
    }

    #[test]
    fn piece_checksums_combine_into_the_files() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let crc = |b: &[u8]| Some(Checksum::Crc32c(crc32c::crc32c(b)));
        let piece = |off: u64, len: u64, written: u64, sum| Piece { off, len, written, checksum: sum };
        let mut pieces = vec![
            piece(100_000, 150_000, 150_000, crc(&data[100_000..250_000])),
            piece(0, 100_000, 100_000, crc(&data[..100_000])),
            piece(250_000, 50_000, 50_000, crc(&data[250_000..])),
        ];
        assert_eq!(combine_crc(&mut pieces), crc(&data));
        assert_eq!(combine_crc(&mut [piece(0, 1, 1, None)]), None);
        // A SHA-2 checksum does not combine (pieces are made only for CRC-32C).
        assert_eq!(combine_crc(&mut [piece(0, 1, 1, Some(Checksum::Sha(vec![0; 32])))]), None);
    }

    #[test]
    fn short_pieces_combine_with_the_zeros_that_complete_the_file() {
        // The file shrank to 120 000 bytes before its pieces were read: the second piece
        // got 20 000 bytes, the third none; the file is completed with zeros to 300 000.
        let data: Vec<u8> = (0..120_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let mut whole = data.clone();
        whole.resize(300_000, 0);
        let crc = |b: &[u8]| Some(Checksum::Crc32c(crc32c::crc32c(b)));
        let mut pieces = vec![
            Piece { off: 0, len: 100_000, written: 100_000, checksum: crc(&data[..100_000]) },
            Piece { off: 100_000, len: 100_000, written: 20_000, checksum: crc(&data[100_000..]) },
            Piece { off: 200_000, len: 100_000, written: 0, checksum: crc(b"") },
        ];
        assert_eq!(combine_crc(&mut pieces), crc(&whole));
        assert_eq!(crc_of_zeros(200_000), crc32c::crc32c(&[0u8; 200_000]));
    }
}

#[allow(clippy::too_many_arguments)]
fn backup(
    common: &Common,
    opts: &MasterOpts,
    interrupt: &Interrupt,
    sig_rx: &crossbeam_channel::Receiver<&'static str>,
    pids: crate::pool::Pids,
    t0: Instant,
    sig: &mut Option<&'static str>,
) -> Result<Summary, Error> {
    let mut ctl = common.conn.connect("pgbb")?;
    interrupt.set_cancel(Some(ctl.cancel_token()));
    let info = check_server(&mut ctl, common)?;
    let run_key = claim_run(&mut ctl, opts.clean)?;
    let caps = info.caps;
    let geo = WalGeometry::new(info.wal_segment_size)
        .ok_or_else(|| PgError::Unsupported(format!("unexpected wal_segment_size {}", info.wal_segment_size)))?;
    let method = choose_method(&mut ctl, opts.compress, common.conn.is_local(), info.in_recovery)?;
    if let Method::Zlib(_) = method {
        log::info!("chunks travel compressed ({method})");
    }

    let mut common = common.clone();
    common.run_key = Some(run_key);
    common.group_access = info.group_access;
    common.chunk = common.chunk_for(method);
    // Tablespaces: each copied to its location or its -T mapping, pg_tblspc/<oid> a symlink.
    let spcs = tablespace::plan(&sql::tablespaces(&mut ctl)?, &opts.mappings)?;
    // Nothing is created or removed before DEST and the targets are known to be safe.
    let view = dest_safety::vet(&mut ctl, &common.dest, &spcs, opts.force)?;
    let mut guard = DestGuard::prepare(&common.dest, opts.force, opts.keep_on_failure, info.group_access)?;
    interrupt.set_last_words(guard.emergency_cleanup(pids.clone()));
    let dest = Dest::open(&common.dest, info.group_access)?;
    let mut roots = Roots::new(Dest::open(&common.dest, info.group_access)?);
    for t in &spcs {
        guard.add_extra(&t.target);
        roots.add_tablespace(t.oid, &t.target, info.group_access)?;
        common.tablespaces.push((t.oid, t.target.clone()));
        log::info!("tablespace \"{}\" ({}) goes to {}", t.name, t.location.display(), t.target.display());
    }
    let version_dir = format!("PG_{}_{}", caps.major(), sql::catalog_version(&mut ctl)?);

    // A slot to hold the WAL the backup needs, before the backup starts. A named slot is
    // the user's (created with -C, then dropped again if the backup fails); otherwise a
    // temporary one, on a session that runs nothing else: a temporary slot is dropped on any
    // error in its session.
    let mut slot_name = format!("pgbb_{}", std::process::id());
    let mut slot_session: Option<Session> = None;
    let mut created_slot =
        CreatedSlot { conn: common.conn.clone(), app: common.session_name("pgbb cleanup"), name: None };
    let mut slot_held = false;
    if let Some(name) = &opts.named_slot {
        slot_name = name.clone();
        if opts.create_slot {
            sql::create_permanent_slot(&mut ctl, name)?;
            created_slot.name = Some(name.clone());
            log::info!("created replication slot {name}");
        } else {
            match sql::slot_wal_status(&mut ctl, name)? {
                None => {
                    return Err(PgError::Unsupported(format!(
                        "replication slot \"{name}\" does not exist (create it with -C)"
                    ))
                    .into())
                }
                Some(s) if s == "lost" => {
                    return Err(PgError::Unsupported(format!("replication slot \"{name}\" has been invalidated")).into())
                }
                Some(_) => {}
            }
        }
        slot_held = true;
    } else if opts.slot {
        let mut ss = common.conn.connect(&common.session_name("pgbb slot"))?;
        sql::session_setup_for(&mut ss, caps)?;
        match sql::create_temp_slot(&mut ss, &slot_name) {
            Ok(_) => {
                log::info!("temporary replication slot {slot_name} holds the WAL of the backup");
                slot_session = Some(ss);
                slot_held = true;
            }
            Err(e) if matches!(e.code(), Some("42501") | Some("55000")) => {
                log::warn!("no replication slot ({e}); WAL the backup needs is not protected from removal. Give the role REPLICATION (ALTER ROLE ... REPLICATION) and set max_replication_slots > 0, or use --no-slot to silence this");
            }
            Err(e) => return Err(e.into()),
        }
    }

    if interrupt.requested() {
        return Err(Error::Interrupted("SIGINT"));
    }
    log::info!("starting the backup ({} checkpoint)", if opts.fast { "fast" } else { "spread" });
    let start = sql::start_backup(&mut ctl, caps, &opts.label, opts.fast)?;
    let tli = sql::checkpoint_timeline(&mut ctl)?;
    log::info!("backup started at {start} on timeline {tli}");

    // Page verification, as core does it, when the cluster has data checksums.
    if opts.verify_checksums && sql::data_checksums(&mut ctl)? {
        common.verify_lsn = Some(start);
    } else if opts.verify_checksums {
        log::info!("the cluster has no data checksums: pages are not verified");
    }

    // The children start now, and connect while the master lists and plans: they get no
    // work before the plan is made and DEST's directories exist (about 50–90 ms saved).
    let mut pool = Pool::new(pids);
    let password = common.conn.password();
    let wal = pool.spawn("WAL child", common.wal_args(start, tli, opts.delay, method), password.as_deref())?;
    let mut workers: Vec<WorkerState> = Vec::new();
    for i in 1..=opts.jobs {
        let idx = pool.spawn(&format!("worker {i}"), common.worker_args(i, method), password.as_deref())?;
        workers.push(WorkerState { idx, ready: false, inflight: VecDeque::new(), finished: false });
    }

    let listing = Instant::now();
    let raw = crate::listing::list(&mut ctl, &view)?;
    let listed_in = listing.elapsed();
    let mut entries = sql::entries_from_listing(raw);
    // In a tablespace only this server version's directory belongs to the backup.
    entries.retain(|e| {
        let p: Vec<&str> = e.path.splitn(4, '/').collect();
        !(p.len() >= 3 && p[0] == "pg_tblspc" && spcs.iter().any(|t| t.oid.to_string() == p[1]) && p[2] != version_dir)
    });
    let plan = layout::plan(entries, caps.layout_rules());
    let pg_control = plan
        .pg_control
        .clone()
        .ok_or_else(|| Error::Inconsistent("the server's listing has no global/pg_control".into()))?;
    log::info!(
        "{} files, {} MB to copy ({} excluded), listed in {} ms",
        plan.files.len() + 1,
        plan.total_bytes() >> 20,
        plan.excluded,
        listed_in.as_millis()
    );
    for d in &plan.dirs {
        let d = SafePath::parse(d)?;
        if roots.is_link(&d) {
            continue;
        }
        let (root, rel) = roots.route(&d);
        root.create_dir_all(&rel)?;
    }
    for t in &spcs {
        let link = common.dest.join("pg_tblspc").join(t.oid.to_string());
        // By path: under the guard, or it could make DEST again after a second signal.
        guard
            .mutate(|| {
                std::fs::create_dir_all(common.dest.join("pg_tblspc"))
                    .and_then(|()| std::os::unix::fs::symlink(&t.target, &link))
            })
            .map_err(|e| Error::Io(format!("cannot create the tablespace link {}: {e}", link.display())))?;
    }

    let (total, nfiles) = (plan.total_bytes(), plan.files.len());
    let queue = work_queue(&plan.files, opts.jobs, common.algorithm);
    let pieces = queue.iter().filter(|w| w.range.is_some()).count();
    if pieces > 0 {
        log::info!("large files go in {pieces} pieces of up to {} MB, copied in parallel", PIECE >> 20);
    }
    let sizes = plan.files.iter().filter(|f| f.size >= SPLIT_FROM).map(|f| (f.path.clone(), f.size)).collect();
    // The queue holds the file list from here on (a master of 200k files keeps one copy).
    drop(plan);
    let mut run = Run {
        pool: &mut pool,
        workers: &mut workers,
        wal,
        wal_ready: false,
        wal_done: None,
        wal_missing: Vec::new(),
        wal_files: 0,
        wal_history: 0,
        queue,
        assemblies: std::collections::HashMap::new(),
        roots: &roots,
        sizes,
        files: 0,
        bytes: 0,
        vanished: 0,
        total,
        sig_rx,
        sig,
        last_report: Instant::now(),
        entries: Vec::with_capacity(nfiles + 3),
        algorithm: common.algorithm,
        sync: common.sync,
        pages: PageReport::default(),
        progress: Progress::new(opts.progress, total, nfiles as u64 + 1, opts.jobs),
        wire: 0,
    };
    run.progress.refresh(None);
    run.copy_files(pg_control, &common.dest)?;
    run.progress.finish();
    run.finish_workers()?;

    // Every data file and pg_control are in place: stop the backup.
    interrupt.set_cancel(Some(ctl.cancel_token()));
    let stop = sql::stop_backup(&mut ctl, caps)?;
    log::info!("backup stopped at {}", stop.lsn);
    let label_tli = stop
        .labelfile
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE: "))
        .and_then(|t| t.trim().parse::<u32>().ok());
    if label_tli.is_some_and(|t| t != tli) {
        return Err(Error::Inconsistent(format!(
            "backup_label says timeline {label_tli:?}, the checkpoint said {tli}"
        )));
    }
    guard.mutate(|| run.write_own_file(&dest, "backup_label", stop.labelfile.as_bytes()))?;
    // Plain format, as pg_basebackup: the pg_tblspc symlinks (to the mapped locations) are
    // the tablespace map; a tablespace_map file would point recovery at the old locations.
    if !stop.spcmapfile.is_empty() {
        log::debug!("tablespace map (not written, the pg_tblspc links replace it):\n{}", stop.spcmapfile);
    }
    run.pool.send(run.wal, &WalCommand::Stop(stop.lsn).to_line())?;
    run.finish_wal()?;
    let (files, bytes, vanished, wal_files, wire) = (run.files, run.bytes, run.vanished, run.wal_files, run.wire);
    let wal_history = run.wal_history;
    let wal_missing = std::mem::take(&mut run.wal_missing);
    let mut entries = std::mem::take(&mut run.entries);
    let pages = std::mem::take(&mut run.pages);
    drop(run);
    pool.stop_all(Duration::from_secs(5));

    // Self-check: the slot, the WAL range, and every file at the size it was written. The
    // slot first: when it was invalidated, that is the cause of any WAL gap.
    if slot_held {
        // An invalidated temporary slot may be gone altogether: the server terminates the
        // session holding it.
        let status = sql::slot_wal_status(&mut ctl, &slot_name)?;
        let closed = slot_session.as_ref().is_some_and(|s| s.is_closed());
        if closed || status.is_none() || status.as_deref() == Some("lost") {
            return Err(Error::SlotLost(slot_name));
        }
    }
    check_wal_range(&dest, geo, tli, start, stop.lsn, &wal_missing)?;
    check_files(&roots, &entries)?;
    if opts.write_recovery_conf {
        let conninfo = recovery::primary_conninfo(common.conn.params(), common.conn.password().as_deref());
        let slot = opts.named_slot.as_deref();
        write_recovery_conf(&dest, &mut entries, &conninfo, slot, common.algorithm, common.sync)?;
        log::info!(
            "wrote standby.signal and primary_conninfo{}",
            if slot.is_some() { " and primary_slot_name" } else { "" }
        );
    }
    for seg in geo.segno(start)..=geo.end_segno(stop.lsn) {
        let done = format!("pg_wal/archive_status/{}.done", geo.file_name(tli, seg));
        dest.write_file(&SafePath::parse(&done)?, b"", false)?;
    }
    if opts.manifest {
        let system_id = if caps.manifest_system_identifier() { Some(sql::system_identifier(&mut ctl)?) } else { None };
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let wal = [WalRange { timeline: tli, start, end: stop.lsn }];
        let mut w = dest.create_file(&SafePath::parse("backup_manifest")?)?;
        manifest::write(&mut w.io(), system_id, &entries, &wal).map_err(|e| Error::Io(e.to_string()))?;
        w.finish(common.sync)?;
    }
    if common.sync {
        log::info!("syncing {}", common.dest.display());
        roots.sync_all()?;
    }
    // The very last step: pg_control appears only in a complete, synced backup; from then
    // on DEST is left alone (one step for a second signal, see DestGuard::complete).
    guard.complete(|| -> Result<(), Error> {
        dest.rename(&SafePath::parse(PG_CONTROL_PENDING)?, &SafePath::parse(PG_CONTROL)?)?;
        if common.sync {
            dest.sync_dir(Some(&SafePath::parse("global")?))?;
        }
        Ok(())
    })?;
    created_slot.name = None;
    drop(slot_session);
    pages.print_totals();
    Ok(Summary {
        files,
        bytes,
        vanished,
        wal_files,
        wal_history,
        start,
        stop: stop.lsn,
        timeline: tli,
        elapsed: t0.elapsed(),
        method,
        bad_pages: pages.total,
        verified_pages: pages.verified,
        manifest: opts.manifest,
        wire,
    })
}

/// A slot made with `-C`: dropped again when the backup fails (a failed backup has no
/// standby to feed).
struct CreatedSlot {
    conn: crate::pg::ConnInfo,
    app: String,
    name: Option<String>,
}

impl Drop for CreatedSlot {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            match self.conn.connect(&self.app).and_then(|mut s| sql::drop_slot(&mut s, &name)) {
                Ok(()) => log::info!("dropped replication slot {name}, created for the failed backup"),
                Err(e) => log::error!(
                    "could not drop replication slot {name}: {e}; drop it with pg_drop_replication_slot('{name}')"
                ),
            }
        }
    }
}

/// `-R`: appends primary_conninfo (and primary_slot_name) to postgresql.auto.conf and writes
/// standby.signal, keeping the manifest entries true.
fn write_recovery_conf(
    dest: &Dest,
    entries: &mut Vec<FileEntry>,
    conninfo: &str,
    slot: Option<&str>,
    algorithm: Algorithm,
    sync: bool,
) -> Result<(), Error> {
    let auto = SafePath::parse("postgresql.auto.conf")?;
    let mut text = std::fs::read(dest.root().join("postgresql.auto.conf")).unwrap_or_default();
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    text.extend_from_slice(recovery::auto_conf_lines(conninfo, slot).as_bytes());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.as_secs() as i64);
    for (path, data) in [(auto, text), (SafePath::parse("standby.signal")?, Vec::new())] {
        dest.write_file(&path, &data, sync)?;
        let mut d = Digest::new(algorithm);
        d.update(&data);
        let entry =
            FileEntry { path: path.as_bytes(), size: data.len() as u64, mtime: now, algorithm, checksum: d.finish() };
        match entries.iter_mut().find(|e| e.path == entry.path) {
            Some(e) => *e = entry,
            None => entries.push(entry),
        }
    }
    Ok(())
}

/// Every file written is in DEST at the size recorded for the manifest (pg_control still
/// under its pending name).
fn check_files(roots: &Roots, entries: &[FileEntry]) -> Result<(), Error> {
    let mut wrong = Vec::new();
    for e in entries {
        let on_disk: &[u8] = if e.path == PG_CONTROL.as_bytes() { PG_CONTROL_PENDING.as_bytes() } else { &e.path };
        let (dest, rel) = roots.route(&SafePath::parse(on_disk)?);
        match dest.file_size(&rel)? {
            Some(n) if n == e.size => {}
            Some(n) => wrong.push(format!("{} is {n} bytes, {} were written", show(&e.path), e.size)),
            None => wrong.push(format!("{} is missing", show(&e.path))),
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(Error::Inconsistent(format!("DEST does not hold what was copied: {}", wrong.join("; "))))
    }
}

/// Page checksum failures, reported as core reports them: at most five per file, then a
/// total per file and one overall.
#[derive(Default)]
struct PageReport {
    per_file: std::collections::BTreeMap<String, u64>,
    total: u64,
    /// Pages whose checksum the workers compared.
    verified: u64,
}

/// Failures shown per file before the rest are only counted.
const PAGE_FAILURES_SHOWN: u64 = 5;

impl PageReport {
    fn add(&mut self, path: &str, block: u32, calculated: u16, expected: u16) {
        let n = self.per_file.entry(path.to_string()).or_insert(0);
        *n += 1;
        self.total += 1;
        if *n <= PAGE_FAILURES_SHOWN {
            log::warn!("checksum verification failed in file \"./{path}\", block {block}: calculated {calculated:X} but expected {expected:X}");
        }
        if *n == PAGE_FAILURES_SHOWN + 1 {
            log::warn!("further checksum verification failures in file \"./{path}\" will not be reported");
        }
    }

    fn print_totals(&self) {
        log::info!("{} data pages verified", self.verified);
        for (path, n) in &self.per_file {
            log::warn!("file \"./{path}\" has a total of {n} checksum verification failures");
        }
        if self.total > 0 {
            log::warn!("{} checksum verification failures in total", self.total);
        }
    }
}

/// Every segment from the start's through the stop's must be in DEST/pg_wal, full size.
pub fn check_wal_range(
    dest: &Dest,
    geo: WalGeometry,
    tli: u32,
    start: Lsn,
    stop: Lsn,
    reported: &[String],
) -> Result<(), Error> {
    let mut missing: Vec<String> = Vec::new();
    for seg in geo.segno(start)..=geo.end_segno(stop) {
        let name = geo.file_name(tli, seg);
        match dest.file_size(&SafePath::parse(format!("pg_wal/{name}"))?)? {
            Some(n) if n == geo.seg_size => {}
            Some(n) => missing.push(format!("{name} ({n} bytes, expected {})", geo.seg_size)),
            None => missing.push(name),
        }
    }
    if tli > 1 && dest.file_size(&SafePath::parse(format!("pg_wal/{tli:08X}.history"))?)?.is_none() {
        missing.push(format!("{tli:08X}.history"));
    }
    if missing.is_empty() && !reported.is_empty() {
        missing.extend(reported.iter().cloned());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::WalIncomplete { missing: missing.join(", ") })
    }
}

/// The copy phase's state, owned by the master's event loop alone.
struct Run<'a> {
    pool: &'a mut Pool,
    workers: &'a mut Vec<WorkerState>,
    wal: usize,
    wal_ready: bool,
    wal_done: Option<u64>,
    wal_missing: Vec<String>,
    wal_files: u64,
    wal_history: u64,
    queue: VecDeque<Work>,
    files: u64,
    bytes: u64,
    vanished: u64,
    total: u64,
    sig_rx: &'a crossbeam_channel::Receiver<&'static str>,
    sig: &'a mut Option<&'static str>,
    last_report: Instant,
    /// Large files being filled piece by piece.
    assemblies: std::collections::HashMap<Vec<u8>, Assembly>,
    roots: &'a Roots,
    /// Listed sizes of the files large enough to be split.
    sizes: std::collections::HashMap<Vec<u8>, u64>,
    /// What the manifest will list.
    entries: Vec<FileEntry>,
    algorithm: Algorithm,
    sync: bool,
    pages: PageReport,
    progress: Progress,
    /// Bytes that came over the network for data files.
    wire: u64,
}

impl Run<'_> {
    /// Writes a file the master itself makes (backup_label, tablespace_map) and records it
    /// for the manifest.
    fn write_own_file(&mut self, dest: &Dest, name: &str, data: &[u8]) -> Result<(), Error> {
        // Atomically: temporary name, fsync, rename, fsync the directory.
        dest.write_file(&SafePath::parse(name)?, data, self.sync)?;
        if self.sync {
            dest.sync_dir(None)?;
        }
        let mut d = Digest::new(self.algorithm);
        d.update(data);
        let mtime =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.as_secs() as i64);
        self.entries.push(FileEntry {
            path: name.as_bytes().to_vec(),
            size: data.len() as u64,
            mtime,
            algorithm: self.algorithm,
            checksum: d.finish(),
        });
        Ok(())
    }

    fn worker_of(&self, child: usize) -> Option<usize> {
        self.workers.iter().position(|w| w.idx == child)
    }

    fn dispatch(&mut self) -> Result<(), Error> {
        for w in 0..self.workers.len() {
            while self.workers[w].ready && self.workers[w].inflight.len() < PIPELINE {
                let Some(job) = self.queue.pop_front() else {
                    return Ok(());
                };
                let idx = self.workers[w].idx;
                self.pool
                    .send(idx, &Request { src: job.path.clone(), dst: job.path.clone(), range: job.range }.to_line())?;
                if self.workers[w].inflight.is_empty() {
                    self.progress.started(w, &show(&job.path));
                }
                self.workers[w].inflight.push_back(job);
            }
        }
        Ok(())
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.workers.iter().all(|w| w.inflight.is_empty())
    }

    fn report(&mut self) {
        if self.last_report.elapsed() >= Duration::from_secs(10) {
            self.last_report = Instant::now();
            let pct = (self.bytes * 100).checked_div(self.total).unwrap_or(100);
            log::info!(
                "{} / {} MB ({pct}%), {} files, {} WAL segments",
                self.bytes >> 20,
                self.total >> 20,
                self.files,
                self.wal_files
            );
        }
    }

    /// Waits for one event and applies it.
    fn step(&mut self) -> Result<(), Error> {
        let ev = select! {
            recv(self.pool.events()) -> ev => ev.map_err(|_| Error::Io("all children are gone".into()))?,
            recv(self.sig_rx) -> s => {
                let s = s.unwrap_or("SIGINT");
                *self.sig = Some(s);
                return Err(Error::Interrupted(s));
            }
            default(Duration::from_secs(1)) => {
                self.report();
                self.progress.refresh(Some(self.wal_files));
                return Ok(());
            }
        };
        self.report();
        match ev {
            Event::Line { child, line } => {
                let role = self.pool.role(child).to_string();
                let resp = Response::parse(&line).map_err(|source| Error::Protocol { role: role.clone(), source })?;
                self.on_response(child, &role, resp)
            }
            Event::Closed { child } => {
                let role = self.pool.role(child).to_string();
                let status = self.pool.wait(child, Duration::from_secs(5));
                let expected = match self.worker_of(child) {
                    Some(w) => self.workers[w].finished && self.workers[w].inflight.is_empty(),
                    None => self.wal_done.is_some(),
                };
                match status {
                    Some(s) if expected && s.success() => Ok(()),
                    Some(s) => Err(Error::ChildDied { role, status: describe_status(&s) }),
                    None => Err(Error::ChildDied { role, status: "closed its output".into() }),
                }
            }
        }
    }

    fn on_response(&mut self, child: usize, role: &str, resp: Response) -> Result<(), Error> {
        let w = self.worker_of(child);
        match resp {
            Response::Hello { protocol, version, .. } => {
                if protocol != PROTOCOL_VERSION {
                    return Err(Error::ChildFailed {
                        role: role.into(),
                        code: None,
                        message: format!(
                            "speaks protocol {protocol} (pgbb {version}), this master speaks {PROTOCOL_VERSION}"
                        ),
                    });
                }
                match w {
                    Some(w) => self.workers[w].ready = true,
                    None => self.wal_ready = true,
                }
            }
            Response::Progress { bytes } => {
                if let Some(w) = w {
                    self.progress.advanced(w, bytes);
                }
            }
            Response::Ok { size, path, checksum, mtime, wire, verified } => match w {
                Some(w) => {
                    let work = self.complete(w, role, &path)?;
                    self.pages.verified += verified;
                    self.progress.finished(w, size);
                    self.bytes += size;
                    self.wire += wire;
                    if work.range.is_some() {
                        self.piece_done(&work, Some((size, checksum, mtime)))?;
                    } else {
                        self.files += 1;
                        self.entries.push(FileEntry { path, size, mtime, algorithm: self.algorithm, checksum });
                    }
                }
                None => self.wal_copied(&path),
            },
            Response::Vanished { path } => match w {
                Some(w) => {
                    let work = self.complete(w, role, &path)?;
                    self.progress.finished(w, 0);
                    if work.range.is_some() {
                        self.piece_done(&work, None)?;
                    } else {
                        self.vanished += 1;
                        log::info!("{} was removed during the backup (normal)", show(&path));
                    }
                }
                None => self.wal_missing.push(show(&path)),
            },
            Response::BadPage { path, block, calculated, expected } => {
                self.pages.add(&show(&path), block, calculated, expected)
            }
            Response::Error { path, message } => return Err(Error::FileFailed { path: show(&path), message }),
            Response::Fatal { message } => {
                // The child's exit status tells what kind of failure it was (DEST, connection).
                let code = self.pool.wait(child, Duration::from_secs(2)).and_then(|s| s.code());
                return Err(Error::ChildFailed { role: role.into(), message, code });
            }
            Response::Done { count } => {
                if w.is_some() {
                    return Err(Error::ChildFailed {
                        role: role.into(),
                        code: None,
                        message: "sent an unexpected done".into(),
                    });
                }
                self.wal_done = Some(count);
            }
        }
        Ok(())
    }

    /// Counts a file the WAL child copied: a segment, or a timeline history file.
    fn wal_copied(&mut self, path: &[u8]) {
        let name = path.rsplit(|&b| b == b'/').next().and_then(|n| std::str::from_utf8(n).ok());
        if name.is_some_and(crate::lsn::is_history_file) {
            self.wal_history += 1;
        } else {
            self.wal_files += 1;
        }
        log::debug!("WAL child copied {}", show(path));
    }

    fn complete(&mut self, w: usize, role: &str, path: &[u8]) -> Result<Work, Error> {
        match self.workers[w].inflight.front() {
            Some(p) if p.path == path => {
                let done = self.workers[w].inflight.pop_front().ok_or_else(|| Error::Io("empty queue".into()))?;
                if let Some(next) = self.workers[w].inflight.front() {
                    let next = show(&next.path);
                    self.progress.started(w, &next);
                }
                Ok(done)
            }
            _ => Err(Error::ChildFailed {
                role: role.into(),
                code: None,
                message: format!("answered for \"{}\", which it was not asked for", show(path)),
            }),
        }
    }

    /// Records one piece of a large file (`copied` = (checksum, mtime), `None` if it
    /// vanished); when the last one is in, puts the file in place (or drops it).
    fn piece_done(&mut self, work: &Work, copied: Option<(u64, Option<Checksum>, i64)>) -> Result<(), Error> {
        let Some((off, len)) = work.range else { return Ok(()) };
        let size = self.total_pieces_size(&work.path);
        let a = self.assemblies.entry(work.path.clone()).or_default();
        if a.expected == 0 {
            a.size = size;
            a.expected = size.div_ceil(PIECE) as usize;
        }
        match copied {
            Some((written, checksum, mtime)) => {
                if a.got.is_empty() {
                    a.mtime = mtime;
                }
                a.got.push(Piece { off, len, written: written.min(len), checksum });
            }
            None => {
                a.vanished = true;
                a.got.push(Piece { off, len, written: 0, checksum: None });
            }
        }
        if a.got.len() < a.expected {
            return Ok(());
        }
        let mut a = self.assemblies.remove(&work.path).unwrap_or_default();
        let rel = SafePath::parse(&work.path)?;
        let (dest, rel) = self.roots.route(&rel);
        if a.vanished {
            dest.drop_pieces(&rel)?;
            self.vanished += 1;
            log::info!("{} was removed during the backup (normal)", show(&work.path));
            return Ok(());
        }
        dest.finish_pieces(&rel, a.size)?;
        let checksum = combine_crc(&mut a.got);
        self.files += 1;
        self.entries.push(FileEntry {
            path: work.path.clone(),
            size: a.size,
            mtime: a.mtime,
            algorithm: self.algorithm,
            checksum,
        });
        Ok(())
    }

    /// The listed size of a file being copied in pieces.
    fn total_pieces_size(&self, path: &[u8]) -> u64 {
        self.sizes.get(path).copied().unwrap_or(0)
    }

    /// Hands out every file, then pg_control, and waits for all of them.
    fn copy_files(&mut self, pg_control: FileJob, dest_root: &std::path::Path) -> Result<(), Error> {
        loop {
            self.dispatch()?;
            if self.idle() && self.workers.iter().any(|w| w.ready) {
                break;
            }
            self.step()?;
        }
        // pg_control last. The server may rewrite it while it is read (a checkpoint): a
        // copy whose CRC does not match is read again.
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            let w = self.workers.iter().position(|w| w.ready).unwrap_or(0);
            let idx = self.workers[w].idx;
            self.pool.send(
                idx,
                &Request { src: pg_control.path.clone(), dst: PG_CONTROL_PENDING.into(), range: None }.to_line(),
            )?;
            self.workers[w].inflight.push_back(Work { path: pg_control.path.clone(), range: None });
            let before = self.files;
            while !self.idle() {
                self.step()?;
            }
            if self.files == before {
                return Err(Error::Inconsistent("global/pg_control vanished from the server".into()));
            }
            let copy = std::fs::read(dest_root.join(PG_CONTROL_PENDING))
                .map_err(|e| Error::Io(format!("cannot read back global/pg_control: {e}")))?;
            if crate::checksum::control_file_consistent(&copy) {
                return Ok(());
            }
            log::warn!("global/pg_control was read while the server rewrote it (CRC mismatch); reading it again ({attempt}/{ATTEMPTS})");
            self.entries.retain(|e| e.path != PG_CONTROL.as_bytes());
            self.files -= 1;
            self.bytes -= copy.len() as u64;
        }
        Err(Error::Inconsistent(format!("global/pg_control did not read consistently in {ATTEMPTS} attempts")))
    }

    /// Closes the workers' input and waits until each has exited cleanly.
    fn finish_workers(&mut self) -> Result<(), Error> {
        for w in self.workers.iter_mut() {
            w.finished = true;
            self.pool.close_stdin(w.idx);
        }
        let mut open = self.workers.len();
        while open > 0 {
            let ev = select! {
                recv(self.pool.events()) -> ev => ev.map_err(|_| Error::Io("all children are gone".into()))?,
                recv(self.sig_rx) -> s => { let s = s.unwrap_or("SIGINT"); *self.sig = Some(s); return Err(Error::Interrupted(s)); }
            };
            match ev {
                Event::Closed { child } if self.worker_of(child).is_some() => {
                    let role = self.pool.role(child).to_string();
                    match self.pool.wait(child, Duration::from_secs(10)) {
                        Some(s) if s.success() => open -= 1,
                        Some(s) => return Err(Error::ChildDied { role, status: describe_status(&s) }),
                        None => return Err(Error::ChildDied { role, status: "did not exit".into() }),
                    }
                }
                Event::Line { child, line } => {
                    let role = self.pool.role(child).to_string();
                    let resp =
                        Response::parse(&line).map_err(|source| Error::Protocol { role: role.clone(), source })?;
                    self.on_response(child, &role, resp)?;
                }
                Event::Closed { child } => {
                    let role = self.pool.role(child).to_string();
                    let status = self
                        .pool
                        .wait(child, Duration::from_secs(5))
                        .map_or("closed its output".into(), |s| describe_status(&s));
                    return Err(Error::ChildDied { role, status });
                }
            }
        }
        Ok(())
    }

    /// Waits for the WAL child's `done` and its clean exit.
    fn finish_wal(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.wal_done.is_none() {
            if Instant::now() > deadline {
                return Err(Error::ChildFailed {
                    role: "WAL child".into(),
                    code: None,
                    message: "did not finish copying WAL within 10 minutes of the stop".into(),
                });
            }
            self.step()?;
        }
        match self.pool.wait(self.wal, Duration::from_secs(10)) {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(Error::ChildDied { role: "WAL child".into(), status: describe_status(&s) }),
            None => Err(Error::ChildDied { role: "WAL child".into(), status: "did not exit after done".into() }),
        }
    }
}
