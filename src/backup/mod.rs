//! The master role (`pgbb DSN DEST`): a base backup as a sequence of phases, each a function
//! that takes what the phases before it produced and returns a small typed result.
//!
//! connect and check → prepare DEST → hold WAL → start → list and plan → copy → stop →
//! WAL range → finish (manifest, sync, pg_control last). A refresh or an incremental backup
//! is another plan and copy phase; the phases around them stay the same.

mod batches;
mod connect;
mod copy;
mod destination;
mod finish;
mod lag;
mod pages;
mod pieces;
mod plan;
mod plan_delta;
mod plan_incr;
mod slot;
mod start;
mod stop;

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::cli::{Common, MasterOpts};
use crate::error::Error;
use crate::lsn::Lsn;
use crate::pool::Pids;
use crate::signals::{self, Interrupt, Signal};
use crate::transfer::Method;

pub use stop::check_wal_range;

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
    /// `--delta` on an older copy: what was compared and removed.
    pub refresh: Option<crate::delta::Refresh>,
    /// `-i`: what went as `INCREMENTAL.*`.
    pub incremental: Option<crate::incremental::Stats>,
}

/// The master's side of signal handling: what the signal thread shares, the channel on which
/// the first signal arrives, and which signal the event loop saw first.
pub(crate) struct Signals {
    interrupt: Arc<Interrupt>,
    rx: Receiver<Signal>,
    pids: Pids,
    seen: Cell<Option<Signal>>,
}

impl Signals {
    /// Takes the first signal off the channel (the event loop's `select!` arm).
    fn received(&self, s: Result<Signal, crossbeam_channel::RecvError>) -> Error {
        let s = s.unwrap_or(Signal::Int);
        self.seen.set(Some(s));
        Error::Interrupted(s)
    }

    /// A signal arrived between two phases.
    fn check(&self) -> Result<(), Error> {
        if self.interrupt.requested() {
            return Err(Error::Interrupted(self.seen.get().unwrap_or(Signal::Int)));
        }
        Ok(())
    }

    /// The first error wins; a signal overrides whatever it caused.
    fn first_cause(&self, e: Error) -> Error {
        if self.interrupt.requested() {
            let sig = self.seen.get().or_else(|| self.rx.try_recv().ok());
            return Error::Interrupted(sig.unwrap_or(Signal::Int));
        }
        e
    }
}

pub fn run(common: &Common, opts: &MasterOpts) -> Result<Summary, Error> {
    let pids = Pids::default();
    let (interrupt, rx) = signals::install(pids.clone())?;
    let sig = Signals { interrupt, rx, pids, seen: Cell::new(None) };
    backup(common, opts, &sig).map_err(|e| sig.first_cause(e))
}

/// The phases, in order. Every failure unwinds through the guards the phases hold: DEST and
/// the tablespace targets are undone (`destination`), a slot made with `-C` is dropped
/// (`slot`), the children are stopped (`start::Children`), and the server ends the backup
/// when the master's session goes.
fn backup(common: &Common, opts: &MasterOpts, sig: &Signals) -> Result<Summary, Error> {
    let t0 = Instant::now();
    let phase = crate::jsonlog::phase;
    phase("connect");
    let mut server = connect::connect(common, opts, sig)?;
    let base = connect::incremental_base(&mut server, opts)?;
    let watch = lag::prepare(&mut server.ctl, &server.info, opts.max_lag)?;
    phase("prepare_dest");
    let mut target = destination::prepare(&mut server, opts, sig)?;
    phase("start_backup");
    let hold = slot::hold_wal(&mut server, opts)?;
    sig.check()?;
    let mut started = start::start_backup(&mut server, opts)?;
    let mut children = start::spawn_children(&server, opts, &started, sig)?;
    phase("list");
    let plan = match &base {
        Some(base) => plan_incr::incremental(&mut server, &target, opts.jobs, base, &mut started, sig)?,
        None if target.refresh => plan_delta::delta(&mut server, &target, opts)?,
        None => plan::full(&mut server, &target, opts)?,
    };
    let refresh = target.refresh.then_some(plan.refresh);
    let incremental = plan.incremental;
    phase("copy");
    // Many small files: what the copy writes goes to disk while it runs, not all in the final sync.
    let flush = server.common.sync && plan.files >= crate::flusher::FROM_FILES;
    let flusher = flush.then(|| target.roots.flusher()).flatten();
    let mut copy = copy::Run::new(&mut children, plan, &target.roots, &server.common, opts, sig);
    copy.watch_lag(watch);
    copy.copy_files(&mut server.ctl, &server.common.dest)?;
    phase("stop_backup");
    let stopped = stop::stop_backup(&mut server, &started, &mut copy, &target, sig)?;
    let copied = copy.into_result();
    children.stop();
    stop::check_wal(&mut server, &hold, &target, &started, &stopped, &copied)?;
    // The background sync went on through the stop and the WAL; the final one follows.
    if let Some(f) = flusher {
        f.finish()?;
    }
    phase("finish");
    let summary = finish::finish(&mut server, opts, &mut target, copied, &started, &stopped)?;
    hold.keep();
    Ok(Summary { elapsed: t0.elapsed(), refresh, incremental, ..summary })
}
