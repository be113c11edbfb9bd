//! Phase 4, start: the backup is started on the master's session (a checkpoint; the start
//! LSN and timeline), then the children are spawned: the WAL child and the workers, which
//! connect while the master lists and plans.

use std::collections::VecDeque;
use std::time::Duration;

use crate::cli::MasterOpts;
use crate::error::Error;
use crate::lsn::Lsn;
use crate::pg::sql;
use crate::pool::Pool;

use super::connect::Server;
use super::copy::WorkerState;
use super::Signals;

/// Where the backup started.
pub(super) struct Started {
    /// The REDO LSN of the backup's checkpoint (START WAL LOCATION).
    pub lsn: Lsn,
    pub tli: u32,
    /// `-i`: the earlier backup's start and timeline (the label's INCREMENTAL FROM lines).
    pub incremental_from: Option<(Lsn, u32)>,
}

pub(super) fn start_backup(server: &mut Server, opts: &MasterOpts) -> Result<Started, Error> {
    let (ctl, caps) = (&mut server.ctl, server.info.caps);
    log::info!("starting the backup ({} checkpoint)", if opts.fast { "fast" } else { "spread" });
    let lsn = sql::start_backup(ctl, caps, &opts.label, opts.fast)?;
    let tli = sql::checkpoint_timeline(ctl)?;
    log::info!("backup started at {lsn} on timeline {tli}");
    // Page verification, as core does it, when the cluster has data checksums.
    if opts.verify_checksums && sql::data_checksums(ctl)? {
        server.common.verify_lsn = Some(lsn);
    } else if opts.verify_checksums {
        log::info!("the cluster has no data checksums: pages are not verified");
    }
    Ok(Started { lsn, tli, incremental_from: None })
}

/// The master's children: the WAL child and the workers.
pub(super) struct Children {
    pub pool: Pool,
    /// The WAL child's index in the pool.
    pub wal: usize,
    pub workers: Vec<WorkerState>,
}

/// Spawns the children right after the start: they get no work before the plan is made and
/// DEST's directories exist, but their connections are made meanwhile (about 50–90 ms saved).
pub(super) fn spawn_children(
    server: &Server,
    opts: &MasterOpts,
    started: &Started,
    sig: &Signals,
) -> Result<Children, Error> {
    let (common, method) = (&server.common, server.method);
    let mut pool = Pool::new(sig.pids.clone());
    let password = common.conn.password();
    let wal_args = common.wal_args(started.lsn, started.tli, opts.delay, method);
    let wal = pool.spawn("WAL child", wal_args, password.as_deref())?;
    let mut workers = Vec::new();
    for i in 1..=opts.jobs {
        let idx = pool.spawn(&format!("worker {i}"), common.worker_args(i, method), password.as_deref())?;
        workers.push(WorkerState {
            idx,
            ready: false,
            inflight: VecDeque::new(),
            requests: VecDeque::new(),
            finished: false,
        });
    }
    Ok(Children { pool, wal, workers })
}

impl Children {
    /// Every child has finished: make sure none is left.
    pub fn stop(&mut self) {
        self.pool.stop_all(Duration::from_secs(5));
    }
}
