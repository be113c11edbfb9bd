//! pgbb: parallel physical base backup of a live PostgreSQL server over ordinary SQL
//! connections. `run` is the whole program; `main.rs` only calls it.

pub mod backup;
pub mod batch;
pub mod block_sums;
pub mod check;
pub mod checksum;
pub mod cli;
pub mod compare;
pub mod compression;
pub mod delta;
pub mod dest;
pub mod dest_lock;
pub mod dest_safety;
pub mod digest;
pub mod error;
pub mod guard;
pub mod helper;
pub mod incremental;
pub mod lag;
pub mod layout;
pub mod listing;
pub mod logging;
pub mod lsn;
pub mod manifest;
pub mod pg;
pub mod pidfd;
pub mod pool;
pub mod progress;
pub mod protocol;
pub mod recovery;
pub mod retry;
pub mod signals;
pub mod summary;
pub mod tablespace;
pub mod transfer;
pub mod version;
pub mod wal;
pub mod wal_setup;
pub mod worker;

use clap::Parser;

use crate::cli::{Args, Config, Mode};
use crate::error::{exit, Error};

fn role_name(a: &Args) -> String {
    match (a.slave, a.stdin, a.pg_xlog, a.worker_id) {
        (true, true, _, Some(i)) => format!("worker {i}"),
        (true, true, _, None) => "worker".into(),
        (true, _, true, _) => "wal".into(),
        (false, _, true, _) => "wal-loop".into(),
        _ => "master".into(),
    }
}

/// Runs pgbb with these arguments and returns the process exit code.
pub fn run(argv: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { exit::USAGE } else { exit::OK };
        }
    };
    logging::init(&role_name(&args), args.verbose, args.debug);
    let spawned_by_master = args.slave && (args.worker_id.is_some() || args.pg_xlog);
    let result = Config::from_args(args).and_then(|cfg| match &cfg.mode {
        Mode::Check { jobs, incremental } => check::run(&cfg.common, *jobs, incremental.as_deref()),
        Mode::InstallHelper => helper::install(&cfg.common),
        Mode::RemoveHelper => helper::remove(&cfg.common),
        Mode::Master(opts) => {
            let s = backup::run(&cfg.common, opts)?;
            summary::print(&cfg.common.dest, &s);
            if s.bad_pages > 0 {
                crate::errln!(
                    "pgbb: error: {} data page(s) failed checksum verification on the server (listed above); the backup is complete and kept, but those pages are corrupt in the source too",
                    s.bad_pages
                );
                return Ok(exit::CHECKSUM);
            }
            Ok(exit::OK)
        }
        Mode::Worker { id, compress } => worker::run(&cfg.common, *id, *compress).map(|()| exit::OK),
        Mode::WalChild { start, timeline, delay, compress } => {
            wal::run_child(&cfg.common, *start, *timeline, *delay, *compress).map(|()| exit::OK)
        }
        Mode::WalStandalone { delay, compress, slot, create_slot } => {
            let _lock = wal_setup::prepare(&cfg.common, slot.as_deref(), *create_slot)?;
            wal::run_standalone(&cfg.common, *delay, *compress, slot.as_deref()).map(|()| exit::OK)
        }
    });
    match result {
        Ok(code) => code,
        // A child of a master has already told it (a `fatal` line); the master reports.
        Err(e) if spawned_by_master => {
            log::debug!("{e}");
            e.exit_code()
        }
        Err(e) => report(&e),
    }
}

fn report(e: &Error) -> i32 {
    crate::errln!("pgbb: error: {e}");
    if let Some(h) = e.hint() {
        crate::errln!("pgbb: hint: {h}");
    }
    e.exit_code()
}
