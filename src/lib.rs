//! pgbb: parallel physical base backup of a live PostgreSQL server over ordinary SQL
//! connections. `run` is the whole program; `main.rs` only calls it.

pub mod backup;
pub mod batch;
pub mod batch_zlib;
pub mod block_sums;
pub mod check;
pub mod checksum;
pub mod cli;
pub mod compare;
pub mod compare_pieces;
pub mod compare_zlib;
pub mod compression;
pub mod copy_reader;
pub mod delta;
pub mod dest;
pub mod dest_lock;
pub mod dest_safety;
pub mod digest;
pub mod error;
pub mod fetch_span;
pub mod fingerprint;
pub mod flusher;
pub mod guard;
pub mod helper;
pub mod inbox;
pub mod incremental;
pub mod jsonlog;
pub mod label;
pub mod lag;
pub mod layout;
pub mod listing;
pub mod logging;
pub mod lsn;
pub mod manifest;
pub mod page_holes;
pub mod pg;
pub mod pidfd;
pub mod piece_ahead;
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
pub mod zlib_ranges;

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
    let argv: Vec<std::ffi::OsString> = argv.into_iter().collect();
    let args = match Args::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) if e.use_stderr() && jsonlog::requested(&argv) => return usage_as_json(&e),
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { exit::USAGE } else { exit::OK };
        }
    };
    logging::init(&role_name(&args), args.verbose, args.debug, args.log_format);
    let spawned_by_master = args.slave && (args.worker_id.is_some() || args.pg_xlog);
    if !spawned_by_master {
        jsonlog::start();
    }
    let mut finished = None;
    let result = Config::from_args(args).and_then(|cfg| act(&cfg, &mut finished));
    match result {
        // A child of a master has already told it (a `fatal` line); the master reports.
        Err(e) if spawned_by_master => {
            log::debug!("{e}");
            e.exit_code()
        }
        Ok(code) if spawned_by_master => code,
        Ok(code) => ended(code, finished.as_ref()),
        Err(e) => report(&e),
    }
}

/// A backup that ran to its end: its summary, and why it exits non-zero all the same (data
/// pages that failed their checksum on the server).
struct Finished {
    /// `None` for a run that took no backup (`--check`).
    summary: Option<backup::Summary>,
    failure: Option<String>,
}

impl Finished {
    /// `--check` found something to fix (listed on stdout).
    fn checks_failed() -> Finished {
        let failure = "one or more checks failed: the FAIL lines on stdout say which and how to fix them";
        Finished { summary: None, failure: Some(failure.into()) }
    }
}

/// What this process does, by its role; a backup that ran to its end is left in `finished`.
fn act(cfg: &Config, finished: &mut Option<Finished>) -> Result<i32, Error> {
    match &cfg.mode {
        Mode::Check { jobs, incremental } => {
            let code = check::run(&cfg.common, *jobs, incremental.as_deref())?;
            if code != exit::OK {
                *finished = Some(Finished::checks_failed());
            }
            Ok(code)
        }
        Mode::InstallHelper => helper::install(&cfg.common),
        Mode::RemoveHelper => helper::remove(&cfg.common),
        Mode::Master(opts) => {
            let f = master(&cfg.common, opts)?;
            let code = if f.failure.is_some() { exit::CHECKSUM } else { exit::OK };
            *finished = Some(f);
            Ok(code)
        }
        Mode::Worker { id, compress } => worker::run(&cfg.common, *id, *compress).map(|()| exit::OK),
        Mode::WalChild { start, timeline, delay, compress } => {
            wal::run_child(&cfg.common, *start, *timeline, *delay, *compress).map(|()| exit::OK)
        }
        Mode::WalStandalone { delay, compress, slot, create_slot } => {
            let _lock = wal_setup::prepare(&cfg.common, slot.as_deref(), *create_slot)?;
            wal::run_standalone(&cfg.common, *delay, *compress, slot.as_deref()).map(|()| exit::OK)
        }
    }
}

/// The master: the backup, then its summary on stdout, and an error when pages failed.
fn master(common: &cli::Common, opts: &cli::MasterOpts) -> Result<Finished, Error> {
    let s = backup::run(common, opts)?;
    summary::print(&common.dest, &s);
    let failure = (s.bad_pages > 0).then(|| {
        format!(
            "{} data page(s) failed checksum verification on the server (listed above); the backup is complete and kept, but those pages are corrupt in the source too",
            s.bad_pages
        )
    });
    if let Some(why) = &failure {
        crate::errln!("pgbb: error: {why}");
    }
    Ok(Finished { summary: Some(s), failure })
}

/// The end of a run that was not a child's: as JSON, the summary line.
fn ended(code: i32, finished: Option<&Finished>) -> i32 {
    if jsonlog::enabled() {
        let error = finished.and_then(|f| f.failure.as_deref()).map(|f| (f, None));
        let backup = finished.and_then(|f| f.summary.as_ref()).map(summary::json);
        jsonlog::finish(code, error, backup);
    }
    code
}

/// Reports a failure on stderr (as JSON: a message, then the summary line).
fn report(e: &Error) -> i32 {
    if jsonlog::enabled() {
        let (message, hint) = (e.to_string(), e.hint());
        jsonlog::message("error", &message, hint);
        jsonlog::finish::<summary::Json>(e.exit_code(), Some((&message, hint)), None);
        return e.exit_code();
    }
    crate::errln!("pgbb: error: {e}");
    if let Some(h) = e.hint() {
        crate::errln!("pgbb: hint: {h}");
    }
    e.exit_code()
}

/// Arguments clap refused, when they asked for `--log-format json`: its message as a JSON
/// message and summary (exit 2).
fn usage_as_json(e: &clap::Error) -> i32 {
    jsonlog::init(jsonlog::LogFormat::Json, "master");
    let text = e.render().to_string();
    let message = text.trim().trim_start_matches("error: ");
    jsonlog::message("error", message, None);
    jsonlog::finish::<summary::Json>(exit::USAGE, Some((message, None)), None);
    exit::USAGE
}
