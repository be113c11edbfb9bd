//! Phase 6, copy: the master's event loop. It hands the plan's work to the workers as they
//! become free (two requests in flight each), follows their answers and the WAL child's,
//! assembles large files from their pieces, and copies pg_control last.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crossbeam_channel::select;

use crate::cli::{Common, MasterOpts};
use crate::dest::{Dest, DestError, Roots, SafePath, PG_CONTROL, PG_CONTROL_PENDING};
use crate::digest::{Algorithm, Checksum, Digest};
use crate::error::Error;
use crate::layout::FileJob;
use crate::manifest::FileEntry;
use crate::pg::Session;
use crate::pool::{describe_status, Event, Pool};
use crate::progress::Progress;
use crate::protocol::{batch_lines, show, Request, Response, PROTOCOL_VERSION};

use super::lag::Watch;
use super::pages::PageReport;
use super::pieces::{combine_crc, Assembly, Piece};
use super::plan::{Plan, Work, PIECE};
use super::start::Children;
use super::Signals;

/// Requests in flight per worker: one being copied and one queued, so a worker never waits
/// for the master between two files.
const PIPELINE: usize = 2;

/// One worker, as the master sees it.
pub(super) struct WorkerState {
    pub idx: usize,
    pub ready: bool,
    pub inflight: VecDeque<Work>,
    /// How many of `inflight` each request (a file, or a batch of small ones) holds.
    pub requests: VecDeque<usize>,
    pub finished: bool,
}

/// What the copy (and the WAL child) produced.
pub(super) struct Copied {
    pub files: u64,
    pub bytes: u64,
    pub vanished: u64,
    pub wal_files: u64,
    pub wal_history: u64,
    /// WAL files the WAL child reported missing on the server.
    pub wal_missing: Vec<String>,
    pub wire: u64,
    /// What the manifest will list.
    pub entries: Vec<FileEntry>,
    pub pages: PageReport,
}

impl<'a> Run<'a> {
    pub fn new(
        children: &'a mut Children,
        plan: Plan,
        roots: &'a Roots,
        common: &Common,
        opts: &MasterOpts,
        sig: &'a Signals,
    ) -> Run<'a> {
        let affinity = plan.affinity && children.workers.len() > 1;
        Run {
            pool: &mut children.pool,
            workers: &mut children.workers,
            wal: children.wal,
            wal_ready: false,
            wal_done: None,
            wal_missing: Vec::new(),
            wal_files: 0,
            wal_history: 0,
            queue: plan.queue,
            affinity,
            files: 0,
            bytes: 0,
            vanished: 0,
            total: plan.total,
            sig,
            pg_control: Some(plan.pg_control),
            last_report: Instant::now(),
            assemblies: HashMap::new(),
            roots,
            sizes: plan.sizes,
            entries: Vec::with_capacity(plan.files + 3),
            algorithm: common.algorithm,
            sync: common.sync,
            pages: PageReport::default(),
            progress: Progress::new(opts.progress, plan.total, plan.files as u64 + 1, opts.jobs),
            wire: 0,
            lag: None,
        }
    }

    /// `--max-lag`: the copy hands out no new work while a standby lags too far.
    pub fn watch_lag(&mut self, watch: Option<Watch>) {
        self.lag = watch;
    }

    /// The counts and the manifest's entries, once the WAL child is done too.
    pub fn into_result(self) -> Copied {
        Copied {
            files: self.files,
            bytes: self.bytes,
            vanished: self.vanished,
            wal_files: self.wal_files,
            wal_history: self.wal_history,
            wal_missing: self.wal_missing,
            wire: self.wire,
            entries: self.entries,
            pages: self.pages,
        }
    }

    /// Tells the WAL child where the backup stopped.
    pub fn send_wal_stop(&mut self, stop: crate::lsn::Lsn) -> Result<(), Error> {
        self.pool.send(self.wal, &crate::protocol::WalCommand::Stop(stop).to_line())
    }
}

/// The copy phase's state, owned by the master's event loop alone. It lives on through the
/// stop (the WAL child reports until the stop LSN is copied), then yields [`Copied`].
pub(super) struct Run<'a> {
    pool: &'a mut Pool,
    workers: &'a mut Vec<WorkerState>,
    wal: usize,
    wal_ready: bool,
    wal_done: Option<u64>,
    wal_missing: Vec<String>,
    wal_files: u64,
    wal_history: u64,
    queue: VecDeque<Work>,
    /// Workers prefer one kind of work each (see `batches::next_request`).
    affinity: bool,
    files: u64,
    bytes: u64,
    vanished: u64,
    total: u64,
    sig: &'a Signals,
    /// `global/pg_control`, copied after everything else.
    pg_control: Option<FileJob>,
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
    /// `--max-lag`'s watch of the standbys.
    lag: Option<Watch>,
}

impl Run<'_> {
    /// Writes a file the master itself makes (backup_label, tablespace_map) and records it
    /// for the manifest.
    pub fn write_own_file(&mut self, dest: &Dest, name: &str, data: &[u8]) -> Result<(), Error> {
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
        let spread = self.workers.len() * PIPELINE;
        for w in 0..self.workers.len() {
            // With affinity, every other worker prefers reading the copy.
            let prefer = self.affinity.then_some(w % 2 == 0);
            while self.workers[w].ready && self.workers[w].requests.len() < PIPELINE {
                let jobs = super::batches::next_request(&mut self.queue, spread, prefer);
                if jobs.is_empty() {
                    return Ok(());
                }
                let reqs: Vec<Request> = jobs
                    .iter()
                    .map(|j| Request {
                        src: j.path.clone(),
                        dst: j.dst(),
                        range: j.range,
                        compare: j.compare,
                        incremental: j.incremental.clone(),
                    })
                    .collect();
                self.send(w, &reqs, jobs)?;
            }
        }
        Ok(())
    }

    /// Sends worker `w` one request (one file, or a batch of small ones) and counts it in
    /// flight.
    fn send(&mut self, w: usize, reqs: &[Request], jobs: Vec<Work>) -> Result<(), Error> {
        self.pool.send(self.workers[w].idx, &batch_lines(reqs))?;
        if let (true, Some(first)) = (self.workers[w].inflight.is_empty(), jobs.first()) {
            self.progress.started(w, &show(&first.path));
        }
        self.workers[w].requests.push_back(jobs.len());
        self.workers[w].inflight.extend(jobs);
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
            recv(self.pool.events()) -> ev => ev.map_err(|_| Error::Internal("the children's event channel closed while they ran"))?,
            recv(self.sig.rx) -> s => return Err(self.sig.received(s)),
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
                        let path = if work.incremental.is_some() { work.dst() } else { path };
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
                let done = self.workers[w]
                    .inflight
                    .pop_front()
                    .ok_or(Error::Internal("a result came from a worker with no file in flight"))?;
                let requests = &mut self.workers[w].requests;
                match requests.front_mut() {
                    Some(1) => drop(requests.pop_front()),
                    Some(n) => *n -= 1,
                    None => return Err(Error::Internal("a result came from a worker with no request in flight")),
                }
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
                // The latest any piece saw: the pieces of a file are spread over the run.
                a.mtime = if a.got.is_empty() { mtime } else { a.mtime.max(mtime) };
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
        let rel = SafePath::parse(work.dst())?;
        let (dest, rel) = self.roots.route(&rel);
        match (a.vanished, work.compare) {
            (true, compared) => {
                if compared {
                    dest.remove_file(&rel)?;
                } else {
                    dest.drop_pieces(&rel)?;
                }
                self.vanished += 1;
                log::info!("{} was removed during the backup (normal)", show(&work.path));
                return Ok(());
            }
            // Compared in place: the copy itself, cut (or extended) to the listed size.
            (false, true) => dest.set_size(&rel, a.size)?,
            (false, false) => dest.finish_pieces(&rel, a.size)?,
        }
        let checksum = combine_crc(&mut a.got);
        self.files += 1;
        self.entries.push(FileEntry {
            path: work.dst(),
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

    /// The copy phase: every file, then pg_control, then the workers' clean exit.
    /// `ctl` (the master's session) looks at the standbys for `--max-lag`.
    pub fn copy_files(&mut self, ctl: &mut Session, dest_root: &std::path::Path) -> Result<(), Error> {
        self.progress.refresh(None);
        self.copy_data_files(ctl)?;
        let pg_control = self.pg_control.take().ok_or(Error::Internal("pg_control was copied already"))?;
        self.copy_pg_control(&pg_control, dest_root)?;
        self.progress.finish();
        // scripts/bench.sh times the stop, the WAL and the finish from this line.
        log::info!("data files copied");
        self.finish_workers()
    }

    /// Hands out the queue and waits until every file is in. While `--max-lag` holds the
    /// copy, nothing new is handed out (what the workers have goes on); events and signals
    /// are followed all the same.
    fn copy_data_files(&mut self, ctl: &mut Session) -> Result<(), Error> {
        loop {
            if !self.held(ctl)? {
                self.dispatch()?;
            }
            if self.idle() && self.workers.iter().any(|w| w.ready) {
                break;
            }
            self.step()?;
        }
        if let Some(w) = &self.lag {
            w.finish();
        }
        Ok(())
    }

    /// Looks at the standbys when it is time; true while one lags too far.
    fn held(&mut self, ctl: &mut Session) -> Result<bool, Error> {
        let Some(w) = &mut self.lag else { return Ok(false) };
        w.look(ctl)?;
        self.progress.set_note(w.note());
        Ok(w.holds())
    }

    /// pg_control last. The server may rewrite it while it is read (a checkpoint): a copy
    /// whose CRC does not match is read again.
    fn copy_pg_control(&mut self, pg_control: &FileJob, dest_root: &std::path::Path) -> Result<(), Error> {
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            let w = self.workers.iter().position(|w| w.ready).unwrap_or(0);
            let req = Request {
                src: pg_control.path.clone(),
                dst: PG_CONTROL_PENDING.into(),
                ..Request::whole(&pg_control.path)
            };
            let work = Work::whole(pg_control);
            self.send(w, &[req], vec![work])?;
            let before = self.files;
            while !self.idle() {
                self.step()?;
            }
            if self.files == before {
                return Err(Error::Inconsistent("global/pg_control vanished from the server".into()));
            }
            let path = dest_root.join(PG_CONTROL_PENDING);
            let copy = std::fs::read(&path).map_err(|source| DestError::Op { action: "read back", path, source })?;
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
                recv(self.pool.events()) -> ev => ev.map_err(|_| Error::Internal("the children's event channel closed while they ran"))?,
                recv(self.sig.rx) -> s => return Err(self.sig.received(s)),
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
    pub fn finish_wal(&mut self) -> Result<(), Error> {
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
