//! The command line: clap definitions, validation into a [`Config`], and the argv of a child.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::digest::Algorithm;
use crate::error::Error;
pub use crate::jsonlog::LogFormat;
use crate::lsn::Lsn;
use crate::pg::ConnInfo;
use crate::transfer::{Method, ZlibHelper};

/// Default chunk size, plain and zlib-compressed (see docs/benchmarks.md for the
/// measurements behind them: per-chunk overhead weighs more in the PL/Python helper).
pub const DEFAULT_CHUNK: u64 = 128 << 10;
pub const DEFAULT_ZLIB_CHUNK: u64 = 512 << 10;
const MIN_CHUNK: u64 = 8 << 10;
const MAX_CHUNK: u64 = 256 << 20;
const MAX_JOBS: usize = 64;
/// Where `--install-helper` puts the helper, and a backup looks for it, by default.
pub const DEFAULT_SCHEMA: &str = "pgbb";
/// What `--install-helper` and `--remove-helper` take no part of: a backup's, a worker's and
/// the WAL loop's arguments.
const NOT_WITH_HELPER: &[&str] = &[
    "dest",
    "check",
    "jobs",
    "pg_xlog",
    "delay",
    "slave",
    "stdin",
    "force",
    "clean",
    "checkpoint",
    "label",
    "chunk_size",
    "compress",
    "no_sync",
    "no_clean",
    "no_slot",
    "slot",
    "create_slot",
    "write_recovery_conf",
    "manifest_checksums",
    "no_manifest",
    "no_verify_checksums",
    "tablespace_mapping",
    "max_rate",
    "max_lag",
    "progress",
    "incremental",
];

const AFTER_HELP: &str = "\
Examples:
  full backup, with progress:
    pgbb -P -c fast 'host=db user=backup' /srv/copy
  spare the standbys: hold the copy while one lags more than 1 GB of WAL:
    pgbb --max-lag 1GB 'host=db user=backup' /srv/copy
  a new streaming standby, with its own slot:
    pgbb -R --slot standby1 -C 'host=db user=backup' /srv/standby
  what is missing for a backup (privileges, settings):
    pgbb --check 'host=db user=backup'
  fetch chosen files by hand:
    printf 'PG_VERSION\\nglobal/pg_control\\n' | pgbb --slave --stdin 'host=db' /tmp/x
  zlib chunks for a backup role that is no superuser, and from standbys (once, on the primary):
    pgbb --install-helper 'host=primary user=postgres'
  feed a warm standby's pg_wal, holding WAL with a slot:
    pgbb -x --slot feeder 'host=db user=backup' /srv/standby

Roles:
  pgbb DSN DEST                  take a base backup of the server into DEST (the master)
  pgbb --slave --stdin DSN DEST  copy the files named on stdin into DEST (a worker)
  pgbb -x DSN DEST               copy the server's WAL into DEST/pg_wal in a loop, until
                                 SIGINT/SIGTERM (a warm-standby feeder)

Worker line protocol (--slave --stdin): one request per line on stdin, SRC or SRC<TAB>DST,
paths relative to the data directory / DEST (\\\\, \\t, \\n, \\r escaped, other bytes as \\xHH).
A line batch<TAB>N is followed by N request lines read with one query (docs/protocol.md).
One result per line on stdout, fields separated by TABs:
  hello  pgbb  PROTOCOL  VERSION  ROLE    first line
  ok     SIZE  PATH  CHECKSUM  MTIME       copied (CRC-32C by default; - with NONE)
  badpage  PATH  BLOCK  CALC  EXPECTED     a data page failed its checksum (with --verify-lsn)
  vanished     PATH                        no such file on the server (normal in a backup)
  error  PATH  MESSAGE                     this file failed; the worker goes on
  fatal  MESSAGE                           the worker cannot go on; it exits as below (5: DEST)
The worker exits 0 at the end of its input. Example:
  printf 'PG_VERSION\\nglobal/pg_control\\n' | pgbb --slave --stdin 'host=db user=postgres' /tmp/x

Exit status: 0 success, 1 backup failed, 2 usage, 3 cannot connect, 4 server not suitable
(version, settings, privileges), 5 DEST problem, 6 backup kept but data pages failed their
checksum on the server, 129 interrupted by SIGHUP, 130 interrupted by SIGINT, 143 interrupted
by SIGTERM (a signal ignored at start, as under nohup, stays ignored). See docs/exit-codes.md.
The password is never put on a child's command line: children get it in PGPASSWORD.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Checkpoint {
    Fast,
    Spread,
}

/// Parallel physical base backup of a PostgreSQL server over ordinary SQL connections.
#[derive(Debug, Parser)]
#[command(name = "pgbb", version = crate::version::text(), after_help = AFTER_HELP)]
pub struct Args {
    /// Connection string: key=value pairs or a postgresql:// URI ("" = all from PG* variables)
    pub dsn: String,
    /// Target directory (created with mode 0700; must be empty unless -f); not with --check
    pub dest: Option<PathBuf>,
    /// Check the server, settings and privileges a backup needs, print what passes and how to
    /// fix what fails, and exit (0 all pass, 4 something fails); takes no DEST
    #[arg(long = "check", help_heading = "Backup")]
    pub check: bool,
    /// Install the compression helper permanently in --schema, for backups by roles that are not
    /// superusers and from standbys (a superuser, once, on the primary; it replicates to every
    /// standby), print the GRANTs a backup role needs, and exit; takes no DEST
    #[arg(long = "install-helper", help_heading = "Compression helper", conflicts_with_all = NOT_WITH_HELPER)]
    pub install_helper: bool,
    /// Remove the helper --install-helper put in --schema (and the schema, if it made it and it
    /// is empty), and exit; takes no DEST
    #[arg(
        long = "remove-helper",
        help_heading = "Compression helper",
        conflicts_with_all = NOT_WITH_HELPER,
        conflicts_with = "install_helper"
    )]
    pub remove_helper: bool,
    /// The schema of the installed compression helper: where --install-helper puts it and
    /// where a backup looks for it (only there, by its qualified name)
    #[arg(long = "schema", value_name = "S", default_value = DEFAULT_SCHEMA, help_heading = "Compression helper")]
    pub schema: String,
    /// Child: the compression helper the master chose (installed or temp)
    #[arg(long = "zlib-helper", hide = true)]
    pub zlib_helper: Option<String>,
    /// Worker processes copying files in parallel
    #[arg(short = 'j', long = "jobs", default_value_t = 2, help_heading = "Backup")]
    pub jobs: usize,
    /// Copy pg_wal in a loop: alone, a standing warm-standby feeder; with --slave, the WAL child
    #[arg(short = 'x', long = "pg_xlog", visible_alias = "pg-wal", help_heading = "WAL loop (warm standby)")]
    pub pg_xlog: bool,
    /// Seconds between two passes of the WAL loop
    #[arg(
        short = 'D',
        long = "delay",
        default_value = "2",
        allow_negative_numbers = true,
        help_heading = "WAL loop (warm standby)"
    )]
    pub delay: f64,
    /// Run as an auxiliary process (with --stdin: a worker; with -x: the WAL child)
    #[arg(short = 'S', long = "slave", help_heading = "Auxiliary roles")]
    pub slave: bool,
    /// Read the files to copy from standard input (worker role)
    #[arg(long = "stdin", help_heading = "Auxiliary roles")]
    pub stdin: bool,
    /// Remove the contents of DEST first if it exists
    #[arg(short = 'f', long = "force", help_heading = "Backup")]
    pub force: bool,
    /// Refresh DEST, an older copy of this cluster (a backup, an interrupted run, a stopped
    /// clone): only what differs travels; the result is a complete backup taken now
    #[arg(long = "delta", conflicts_with = "force", help_heading = "Backup")]
    pub delta: bool,
    /// With --delta: compare every block by SHA-256, never a relation page by its header (LSN
    /// and checksum) where DEST is an unstarted backup or an interrupted run of this cluster;
    /// every page of the server is then read whole and verified, as in a full backup
    #[arg(long = "delta-hash", requires = "delta", help_heading = "Backup")]
    pub delta_hash: bool,
    /// Incremental backup in PostgreSQL's own format (17+): only the blocks changed since the
    /// backup OLD_MANIFEST is of (its backup_manifest), found in the server's WAL summaries;
    /// pg_combinebackup merges it with the earlier backups into a full one
    #[arg(
        short = 'i',
        long = "incremental",
        value_name = "OLD_MANIFEST",
        conflicts_with_all = ["delta", "no_manifest"],
        help_heading = "Backup"
    )]
    pub incremental: Option<PathBuf>,
    /// Before starting, end what earlier pgbb runs whose master is gone left behind: terminate
    /// their sessions (their temporary slots go with them); runs in progress are left alone
    #[arg(long = "clean", help_heading = "Backup")]
    pub clean: bool,
    /// Show progress messages
    #[arg(short = 'v', long = "verbose", help_heading = "Output")]
    pub verbose: bool,
    /// Show debugging messages, including every SQL statement
    #[arg(short = 'd', long = "debug", help_heading = "Output")]
    pub debug: bool,
    /// Checkpoint at the start: fast (immediate) or spread (like pg_basebackup's default)
    #[arg(short = 'c', long = "checkpoint", value_enum, default_value = "spread", help_heading = "Backup")]
    pub checkpoint: Checkpoint,
    /// Backup label (at most 1024 bytes, one line)
    #[arg(short = 'l', long = "label", default_value = "pgbb base backup", help_heading = "Backup")]
    pub label: String,
    /// Bytes per chunk (suffixes k, M) [default: 128k, 512k with zlib]
    #[arg(long = "chunk-size", help_heading = "Backup")]
    pub chunk_size: Option<String>,
    /// Chunk compression: auto (over the network: zlib through the installed helper, else a
    /// temporary helper when the role may create it, with the server's own zstd when it has
    /// one, else zlib; else plain), none, zlib[:LEVEL], zstd[:LEVEL]
    #[arg(long = "compress", default_value = "auto", help_heading = "Backup")]
    pub compress: String,
    /// Do not fsync DEST at the end
    #[arg(short = 'N', long = "no-sync", help_heading = "Integrity and safety")]
    pub no_sync: bool,
    /// After a failure, keep DEST for inspection (without global/pg_control)
    #[arg(short = 'n', long = "no-clean", help_heading = "Integrity and safety")]
    pub no_clean: bool,
    /// Do not create a temporary replication slot to hold the WAL the backup needs
    #[arg(long = "no-slot", help_heading = "Backup")]
    pub no_slot: bool,
    /// Use this (permanent) replication slot to hold WAL, instead of a temporary one; with -R
    /// it becomes primary_slot_name; with -x it is advanced as segments are copied
    #[arg(long = "slot", value_name = "NAME", help_heading = "Backup")]
    pub slot: Option<String>,
    /// Create the slot named by --slot (dropped again if the backup fails; with -x, an existing
    /// physical slot of that name is used)
    #[arg(short = 'C', long = "create-slot", help_heading = "Backup")]
    pub create_slot: bool,
    /// Make the copy a standby of the source: standby.signal and primary_conninfo (and
    /// primary_slot_name with --slot) in postgresql.auto.conf
    #[arg(short = 'R', long = "write-recovery-conf", help_heading = "Backup")]
    pub write_recovery_conf: bool,
    /// Checksum of each file in backup_manifest: NONE, CRC32C, SHA224, SHA256, SHA384, SHA512
    #[arg(
        long = "manifest-checksums",
        value_name = "ALGO",
        default_value = "CRC32C",
        help_heading = "Integrity and safety"
    )]
    pub manifest_checksums: String,
    /// Do not write backup_manifest
    #[arg(long = "no-manifest", help_heading = "Integrity and safety")]
    pub no_manifest: bool,
    /// Do not verify data page checksums while copying
    #[arg(long = "no-verify-checksums", help_heading = "Integrity and safety")]
    pub no_verify_checksums: bool,
    /// Worker: verify data pages, skipping those changed at or after this LSN
    #[arg(long = "verify-lsn", hide = true)]
    pub verify_lsn: Option<String>,
    /// Worker (--delta): DEST's whole pages with an LSN up to this are compared by header
    #[arg(long = "trust-lsn", hide = true)]
    pub trust_lsn: Option<String>,
    /// Copy the tablespace at OLDDIR to NEWDIR instead (repeatable; write = in a path as \\=)
    #[arg(short = 'T', long = "tablespace-mapping", value_name = "OLDDIR=NEWDIR", help_heading = "Backup")]
    pub tablespace_mapping: Vec<OsString>,
    /// Worker: tablespace OID is copied to DIR
    #[arg(long = "tablespace", hide = true, value_name = "OID=DIR")]
    pub tablespace: Vec<OsString>,
    /// Limit the transfer of the data directory to RATE over all workers, as pg_basebackup:
    /// kilobytes per second, or with suffix k (kB/s) or M (MB/s); 32 to 1048576 kB/s (1024M).
    /// WAL is not limited
    #[arg(short = 'r', long = "max-rate", value_name = "RATE", help_heading = "Backup")]
    pub max_rate: Option<String>,
    /// Hold the copy while a standby in pg_stat_replication lags more than LAG behind the
    /// server: bytes of WAL not replayed (16MB, 1GB) or replay_lag (30s, 5min); it resumes
    /// under 80 % of LAG. Needs pg_monitor (or superuser)
    #[arg(long = "max-lag", value_name = "LAG", help_heading = "Backup")]
    pub max_lag: Option<String>,
    /// Worker: its share of --max-rate, bytes per second
    #[arg(long = "worker-rate", hide = true)]
    pub worker_rate: Option<u64>,
    /// Show progress: a live display on a terminal, else a line every 5 seconds
    #[arg(short = 'P', long = "progress", help_heading = "Output")]
    pub progress: bool,
    /// What goes to stderr: plain lines, or json: one JSON object per line (messages, phases,
    /// progress every 5 seconds even without -P and instead of -P's display, and a summary
    /// with the exit code last; docs/automation.md)
    #[arg(long = "log-format", value_name = "FORMAT", value_enum, default_value = "plain", help_heading = "Output")]
    pub log_format: LogFormat,
    /// Worker: print `progress` lines while copying
    #[arg(long = "report-progress", hide = true)]
    pub report_progress: bool,
    #[arg(long = "worker-id", hide = true)]
    pub worker_id: Option<usize>,
    /// Child: the key of the master's run, in its session's application_name (see pg::run)
    #[arg(long = "run-key", hide = true)]
    pub run_key: Option<i32>,
    #[arg(long = "start-lsn", hide = true)]
    pub start_lsn: Option<String>,
    #[arg(long = "timeline", hide = true)]
    pub timeline: Option<u32>,
    #[arg(long = "group-access", hide = true)]
    pub group_access: bool,
    /// Worker: write files under their final names (the master's workers; see Dest::in_place)
    #[arg(long = "in-place", hide = true)]
    pub in_place: bool,
    /// Worker: start write-back of each finished file (the master syncs at the end)
    #[arg(long = "writeback", hide = true)]
    pub writeback: bool,
}

/// Settings every role shares.
#[derive(Clone)]
pub struct Common {
    pub conn: ConnInfo,
    pub dest: PathBuf,
    pub chunk: u64,
    /// `--chunk-size` was given (else the default follows the method, see [`Common::chunk_for`]).
    pub chunk_set: bool,
    pub sync: bool,
    pub verbose: bool,
    pub debug: bool,
    pub group_access: bool,
    /// Per-file checksum for the manifest, computed by the children.
    pub algorithm: Algorithm,
    /// Page verification (workers): the backup's start LSN.
    pub verify_lsn: Option<Lsn>,
    /// `--delta` (workers): DEST's relation pages up to this LSN are compared by their header
    /// (see `delta::trust`).
    pub trust_lsn: Option<Lsn>,
    /// Workers print `progress` lines (the master shows -P).
    pub report_progress: bool,
    /// Workers write files in place, without temporary names (set for the master's workers).
    pub in_place: bool,
    /// Workers start write-back of each finished file (the master will syncfs).
    pub writeback: bool,
    /// Bytes per second: for the master all workers together, for a worker its share.
    pub rate: Option<u64>,
    /// Workers the master runs (to split `rate`).
    pub jobs: usize,
    /// Tablespaces copied outside DEST: (oid, target directory).
    pub tablespaces: Vec<(u32, PathBuf)>,
    /// The master's run this process belongs to (see [`crate::pg::run`]).
    pub run_key: Option<i32>,
    /// `--schema`: where the installed compression helper is.
    pub schema: String,
    /// The compression helper the master chose (its children are told); `None`: decide.
    pub zlib_helper: Option<ZlibHelper>,
    /// `--log-format`, passed on to the children.
    pub log_format: LogFormat,
}

/// How compression was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    Auto(u32),
    Fixed(Method),
}

pub struct MasterOpts {
    pub jobs: usize,
    pub delay: Duration,
    pub force: bool,
    /// `--delta`: refresh the copy in DEST.
    pub delta: bool,
    /// `--delta-hash`: never compare by page header.
    pub delta_hash: bool,
    /// `-i OLD_MANIFEST`: an incremental backup on top of the backup of that manifest.
    pub incremental: Option<PathBuf>,
    pub clean: bool,
    pub fast: bool,
    pub label: String,
    pub compress: Compress,
    pub keep_on_failure: bool,
    pub slot: bool,
    pub manifest: bool,
    pub verify_checksums: bool,
    /// `--slot NAME`, and whether to create it (`-C`).
    pub named_slot: Option<String>,
    pub create_slot: bool,
    pub write_recovery_conf: bool,
    pub progress: bool,
    pub mappings: Vec<crate::tablespace::Mapping>,
    /// `--max-lag`: hold the copy while a standby lags more.
    pub max_lag: Option<crate::lag::MaxLag>,
}

pub enum Mode {
    Master(MasterOpts),
    /// `--check`: preflight only.
    Check {
        jobs: usize,
        /// `--check -i OLD_MANIFEST`: also whether an incremental backup on it can be taken.
        incremental: Option<PathBuf>,
    },
    /// `--install-helper`, `--remove-helper`.
    InstallHelper,
    RemoveHelper,
    Worker {
        id: Option<usize>,
        compress: Compress,
    },
    WalChild {
        start: Lsn,
        timeline: u32,
        delay: Duration,
        compress: Compress,
    },
    WalStandalone {
        slot: Option<String>,
        /// `-C`: create the slot first (see `wal_setup`).
        create_slot: bool,
        delay: Duration,
        compress: Compress,
    },
}

pub struct Config {
    pub common: Common,
    pub mode: Mode,
}

/// Parses sizes like `256k`, `8M`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => {
            let mult = match t[i..].to_ascii_lowercase().as_str() {
                "k" | "kb" | "kib" => 1u64 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                _ => return Err(format!("invalid size {s:?} (examples: 262144, 256k, 1M)")),
            };
            (&t[..i], mult)
        }
        None => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?} (examples: 262144, 256k, 1M)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

/// A worker's `--tablespace OID=DIR` (DIR in any bytes, as the server's locations).
fn parse_worker_tablespace(t: &std::ffi::OsStr) -> Option<(u32, PathBuf)> {
    use std::os::unix::ffi::OsStrExt;
    let b = t.as_bytes();
    let i = b.iter().position(|&c| c == b'=')?;
    let oid = std::str::from_utf8(&b[..i]).ok()?.parse().ok()?;
    Some((oid, PathBuf::from(std::ffi::OsStr::from_bytes(&b[i + 1..]))))
}

/// The length of the longest prefix of `t` that C's `strtod` reads as a decimal number
/// (sign, digits, a point, an exponent); 0 when there is none.
fn float_prefix(t: &str) -> usize {
    let b = t.as_bytes();
    let digits = |i: usize| b.get(i..).map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count());
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let int = digits(i);
    i += int;
    let frac = if b.get(i) == Some(&b'.') { digits(i + 1) } else { 0 };
    if int + frac == 0 {
        return 0;
    }
    if b.get(i) == Some(&b'.') {
        i += 1 + frac;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        let exp = digits(i + 1 + sign);
        if exp > 0 {
            i += 1 + sign + exp;
        }
    }
    i
}

/// `--max-rate` as pg_basebackup's `-r` reads it (parse_max_rate): a number (decimals
/// allowed) in kilobytes per second, or with the suffix `k` (the same) or `M` (megabytes);
/// 32 kB/s to 1024 MB/s. Returns bytes per second (a kilobyte is 1024 bytes).
pub fn parse_max_rate(src: &str) -> Result<u64, String> {
    let t = src.trim_start();
    let end = float_prefix(t);
    if end == 0 {
        return Err(format!("transfer rate \"{src}\" is not a valid value"));
    }
    let mut kb: f64 = t[..end].parse().map_err(|_| format!("transfer rate \"{src}\" is not a valid value"))?;
    if kb.is_infinite() {
        return Err(format!("invalid transfer rate \"{src}\": Numerical result out of range"));
    }
    if kb <= 0.0 {
        return Err("transfer rate must be greater than zero".into());
    }
    let suffix = t[end..].trim_start();
    let rest = match suffix.strip_prefix('k') {
        Some(r) => r,
        None => match suffix.strip_prefix('M') {
            Some(r) => {
                kb *= 1024.0;
                r
            }
            None => suffix,
        },
    };
    if !rest.trim_start().is_empty() {
        return Err(format!("invalid --max-rate unit: \"{suffix}\""));
    }
    if kb >= 4294967296.0 {
        return Err(format!("transfer rate \"{src}\" exceeds integer range"));
    }
    if !(32.0..=1048576.0).contains(&kb) {
        return Err(format!("transfer rate \"{src}\" is out of range"));
    }
    Ok((kb as u64) << 10)
}

pub fn parse_compress(s: &str) -> Result<Compress, String> {
    let level = |l: &str| match l.parse::<u32>() {
        Ok(n) if n <= 9 => Ok(n),
        _ => Err(format!("invalid zlib level {l:?}: use 0 to 9")),
    };
    let zstd = |l: &str| match l.parse::<u32>() {
        Ok(n) if (1..=19).contains(&n) => Ok(n),
        _ => Err(format!("invalid zstd level {l:?}: use 1 to 19")),
    };
    match s.split_once(':') {
        None if s == "auto" => Ok(Compress::Auto(1)),
        None if s == "none" => Ok(Compress::Fixed(Method::Plain)),
        None if s == "zlib" => Ok(Compress::Fixed(Method::Zlib(1))),
        None if s == "zstd" => Ok(Compress::Fixed(Method::Zstd(1))),
        Some(("zlib", l)) => Ok(Compress::Fixed(Method::Zlib(level(l)?))),
        Some(("zstd", l)) => Ok(Compress::Fixed(Method::Zstd(zstd(l)?))),
        Some(("auto", l)) => Ok(Compress::Auto(level(l)?)),
        _ => Err(format!("invalid --compress {s:?}: use auto, none, zlib[:LEVEL] or zstd[:LEVEL]")),
    }
}

fn compress_arg(c: Compress) -> String {
    match c {
        Compress::Auto(l) => format!("auto:{l}"),
        Compress::Fixed(m) => m.to_string(),
    }
}

fn delay(d: f64) -> Result<Duration, Error> {
    if !d.is_finite() || !(0.0..=86400.0).contains(&d) {
        return Err(Error::Usage(format!("invalid --delay {d}: give seconds from 0 to 86400")));
    }
    Ok(Duration::from_secs_f64(d))
}

impl Config {
    pub fn from_args(a: Args) -> Result<Config, Error> {
        let compress = parse_compress(&a.compress).map_err(Error::Usage)?;
        check_slot_args(&a)?;
        let common = common_settings(&a)?;
        let mode = mode(a, compress)?;
        Ok(Config { common, mode })
    }
}

/// `--chunk-size`, within its bounds.
fn chunk_size(a: &Args) -> Result<u64, Error> {
    let Some(c) = &a.chunk_size else { return Ok(DEFAULT_CHUNK) };
    let n = parse_size(c).map_err(Error::Usage)?;
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&n) {
        return Err(Error::Usage(format!("--chunk-size must be between 8k and 256M, not {c}")));
    }
    Ok(n)
}

/// `--slot`, `--no-slot` and `-C` together.
fn check_slot_args(a: &Args) -> Result<(), Error> {
    if let Some(name) = &a.slot {
        if name.is_empty()
            || name.len() > 63
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::Usage(format!("invalid slot name {name:?}: use a-z, 0-9 and _, at most 63 characters")));
        }
        if a.no_slot {
            return Err(Error::Usage("--slot and --no-slot contradict each other".into()));
        }
    }
    if a.create_slot && a.slot.is_none() {
        return Err(Error::Usage("-C/--create-slot needs --slot NAME".into()));
    }
    Ok(())
}

fn parse_lsn(l: &str) -> Result<crate::lsn::Lsn, Error> {
    l.parse().map_err(|e: crate::lsn::LsnParseError| Error::Usage(e.to_string()))
}

/// What every role shares: the connection, DEST, chunks, checksums, rate, tablespaces.
fn common_settings(a: &Args) -> Result<Common, Error> {
    let algorithm: Algorithm = a.manifest_checksums.parse().map_err(Error::Usage)?;
    let verify_lsn = a.verify_lsn.as_deref().map(parse_lsn).transpose()?;
    let trust_lsn = a.trust_lsn.as_deref().map(parse_lsn).transpose()?;
    let rate = match (&a.max_rate, a.worker_rate) {
        (Some(r), _) => Some(parse_max_rate(r).map_err(Error::Usage)?),
        (None, Some(w)) => Some(w),
        (None, None) => None,
    };
    let conn = ConnInfo::from_dsn(&a.dsn)?;
    let no_dest = a.check || a.install_helper || a.remove_helper;
    let dest = match (&a.dest, no_dest) {
        (Some(_), true) => {
            return Err(Error::Usage("--check, --install-helper and --remove-helper take no DEST".into()))
        }
        (None, true) => PathBuf::new(),
        (Some(d), false) => d.clone(),
        (None, false) => return Err(Error::Usage("missing DEST (the target directory)".into())),
    };
    let tablespaces = a
        .tablespace
        .iter()
        .map(|t| parse_worker_tablespace(t).ok_or_else(|| Error::Usage(format!("invalid --tablespace {t:?}"))))
        .collect::<Result<_, _>>()?;
    Ok(Common {
        conn,
        dest,
        chunk: chunk_size(a)?,
        chunk_set: a.chunk_size.is_some(),
        sync: !a.no_sync,
        verbose: a.verbose,
        debug: a.debug,
        group_access: a.group_access,
        algorithm,
        verify_lsn,
        trust_lsn,
        report_progress: a.report_progress || ((a.progress || a.log_format == LogFormat::Json) && !a.slave),
        in_place: a.in_place,
        writeback: a.writeback,
        rate,
        jobs: a.jobs.max(1),
        tablespaces,
        run_key: a.run_key,
        schema: schema(&a.schema)?,
        zlib_helper: match a.zlib_helper.as_deref() {
            None => None,
            Some("temp") => Some(ZlibHelper::Temp),
            Some("installed") => Some(ZlibHelper::Installed(a.schema.clone())),
            Some(h) => return Err(Error::Usage(format!("invalid --zlib-helper {h:?}: installed or temp"))),
        },
        log_format: a.log_format,
    })
}

/// `--schema`: a plain lower-case identifier (no quoting surprises), not a system schema.
fn schema(s: &str) -> Result<String, Error> {
    let plain = s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !plain || s.len() > 63 || s.starts_with("pg_") || s == "information_schema" {
        return Err(Error::Usage(format!(
            "invalid --schema {s:?}: use a-z, 0-9 and _ (not starting with a digit or pg_), at most 63 characters"
        )));
    }
    Ok(s.to_string())
}

/// The role this process plays, from `--slave`, `--stdin`, `-x` and `--check`.
fn mode(a: Args, compress: Compress) -> Result<Mode, Error> {
    if a.incremental.is_some() && (a.slave || a.pg_xlog) {
        return Err(Error::Usage(
            "-i/--incremental goes with a backup (pgbb -i OLD_MANIFEST DSN DEST) or --check".into(),
        ));
    }
    if a.max_lag.is_some() && (a.check || a.slave || a.pg_xlog) {
        return Err(Error::Usage("--max-lag goes with a backup (pgbb DSN DEST), not --check, --slave or -x".into()));
    }
    Ok(match (a.slave, a.stdin, a.pg_xlog) {
        _ if a.check => Mode::Check { jobs: a.jobs, incremental: a.incremental.clone() },
        _ if a.install_helper => Mode::InstallHelper,
        _ if a.remove_helper => Mode::RemoveHelper,
        (true, true, false) => Mode::Worker { id: a.worker_id, compress },
        (true, false, true) => {
            let start = parse_lsn(
                a.start_lsn.as_deref().ok_or_else(|| Error::Usage("the WAL child needs --start-lsn".into()))?,
            )?;
            let timeline = a.timeline.ok_or_else(|| Error::Usage("the WAL child needs --timeline".into()))?;
            Mode::WalChild { start, timeline, delay: delay(a.delay)?, compress }
        }
        (false, false, true) => {
            Mode::WalStandalone { delay: delay(a.delay)?, compress, slot: a.slot.clone(), create_slot: a.create_slot }
        }
        (true, true, true) => return Err(Error::Usage("--stdin and -x are different roles; use one".into())),
        (true, false, false) => {
            return Err(Error::Usage("--slave needs --stdin (a worker) or -x (the WAL child)".into()))
        }
        (false, true, _) => return Err(Error::Usage("--stdin goes with --slave".into())),
        (false, false, false) => Mode::Master(master_opts(a, compress)?),
    })
}

/// A backup's own options, checked.
fn master_opts(a: Args, compress: Compress) -> Result<MasterOpts, Error> {
    if a.jobs == 0 || a.jobs > MAX_JOBS {
        return Err(Error::Usage(format!("-j/--jobs must be between 1 and {MAX_JOBS}, not {}", a.jobs)));
    }
    if a.label.len() > 1024 || a.label.contains(['\n', '\r']) {
        return Err(Error::Usage("--label must be one line of at most 1024 bytes".into()));
    }
    let mappings = a
        .tablespace_mapping
        .iter()
        .map(|m| crate::tablespace::parse_mapping(m))
        .collect::<Result<_, _>>()
        .map_err(Error::Usage)?;
    let max_lag = a.max_lag.as_deref().map(crate::lag::parse_max_lag).transpose().map_err(Error::Usage)?;
    Ok(MasterOpts {
        jobs: a.jobs,
        delay: delay(a.delay)?,
        force: a.force,
        delta: a.delta,
        delta_hash: a.delta_hash,
        incremental: a.incremental,
        clean: a.clean,
        fast: a.checkpoint == Checkpoint::Fast,
        label: a.label,
        compress,
        keep_on_failure: a.no_clean,
        slot: !a.no_slot,
        manifest: !a.no_manifest,
        verify_checksums: !a.no_verify_checksums,
        named_slot: a.slot,
        create_slot: a.create_slot,
        write_recovery_conf: a.write_recovery_conf,
        progress: a.progress,
        mappings,
        max_lag,
    })
}

impl Common {
    /// The chunk size for `method`: the one asked for, or that method's default.
    pub fn chunk_for(&self, method: Method) -> u64 {
        match method {
            Method::Zlib(_) | Method::Zstd(_) if !self.chunk_set => DEFAULT_ZLIB_CHUNK,
            _ => self.chunk,
        }
    }

    /// The application_name of this process's session with role `role` (with the run key
    /// of the master's run, if any).
    pub fn session_name(&self, role: &str) -> String {
        crate::pg::run::session_name(role, self.run_key)
    }

    fn shared_args(&self, method: Method, algorithm: Algorithm) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            "--chunk-size".into(),
            self.chunk.to_string().into(),
            "--compress".into(),
            compress_arg(Compress::Fixed(method)).into(),
            "--manifest-checksums".into(),
            algorithm.to_string().into(),
        ];
        match (method, &self.zlib_helper) {
            (Method::Zlib(_) | Method::Zstd(_), Some(ZlibHelper::Installed(schema))) => {
                v.extend(["--zlib-helper".into(), "installed".into(), "--schema".into(), schema.into()])
            }
            (Method::Zlib(_) | Method::Zstd(_), Some(ZlibHelper::Temp)) => {
                v.extend(["--zlib-helper".into(), "temp".into()])
            }
            _ => {}
        }
        // Children never fsync file by file: the master syncs the whole file system of DEST
        // (and of each tablespace target) once at the end, with syncfs, before pg_control.
        v.push("--no-sync".into());
        if self.group_access {
            v.push("--group-access".into());
        }
        if let Some(k) = self.run_key {
            v.extend(["--run-key".into(), k.to_string().into()]);
        }
        if self.log_format == LogFormat::Json {
            v.extend(["--log-format".into(), "json".into()]);
        }
        if self.debug {
            v.push("--debug".into());
        } else if self.verbose {
            v.push("--verbose".into());
        }
        v
    }

    /// Each worker's share of a global rate (set by the master to rate / jobs).
    fn worker_share(&self, rate: u64) -> u64 {
        (rate / self.jobs.max(1) as u64).max(1)
    }

    fn positional(&self) -> Vec<OsString> {
        vec!["--".into(), self.conn.child_dsn().into(), self.dest.clone().into_os_string()]
    }

    /// argv (without the program) of worker `id`. Never contains the password.
    pub fn worker_args(&self, id: usize, method: Method) -> Vec<OsString> {
        let mut v: Vec<OsString> =
            vec!["--slave".into(), "--stdin".into(), "--worker-id".into(), id.to_string().into()];
        if let Some(l) = self.verify_lsn {
            v.extend(["--verify-lsn".into(), l.to_string().into()]);
        }
        if let Some(l) = self.trust_lsn {
            v.extend(["--trust-lsn".into(), l.to_string().into()]);
        }
        if self.report_progress {
            v.push("--report-progress".into());
        }
        // The backup becomes startable only with pg_control, written last by the master.
        v.push("--in-place".into());
        if self.sync {
            v.push("--writeback".into());
        }
        if let Some(r) = self.rate {
            v.extend(["--worker-rate".into(), self.worker_share(r).to_string().into()]);
        }
        for (oid, dir) in &self.tablespaces {
            let mut arg = OsString::from(format!("{oid}="));
            arg.push(dir);
            v.extend(["--tablespace".into(), arg]);
        }
        v.extend(self.shared_args(method, self.algorithm));
        v.extend(self.positional());
        v
    }

    /// argv of the WAL child. Never contains the password.
    pub fn wal_args(&self, start: Lsn, timeline: u32, delay: Duration, method: Method) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            "--slave".into(),
            "-x".into(),
            "--start-lsn".into(),
            start.to_string().into(),
            "--timeline".into(),
            timeline.to_string().into(),
            "--delay".into(),
            delay.as_secs_f64().to_string().into(),
        ];
        // WAL is not listed in the manifest.
        v.extend(self.shared_args(method, Algorithm::None));
        v.extend(self.positional());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_rate_as_pg_basebackup() {
        assert_eq!(parse_max_rate("1000").unwrap(), 1000 << 10, "kilobytes by default");
        assert_eq!(parse_max_rate("32").unwrap(), 32 << 10);
        assert_eq!(parse_max_rate("50M").unwrap(), 50 << 20);
        assert_eq!(parse_max_rate(" 64 k ").unwrap(), 64 << 10);
        assert_eq!(parse_max_rate("1.5M").unwrap(), 1536 << 10);
        assert_eq!(parse_max_rate("1e3").unwrap(), 1000 << 10);
        assert_eq!(parse_max_rate("1024M").unwrap(), 1 << 30);
        assert_eq!(parse_max_rate("x").unwrap_err(), "transfer rate \"x\" is not a valid value");
        assert_eq!(parse_max_rate("0").unwrap_err(), "transfer rate must be greater than zero");
        assert_eq!(parse_max_rate("-5").unwrap_err(), "transfer rate must be greater than zero");
        assert_eq!(parse_max_rate("31").unwrap_err(), "transfer rate \"31\" is out of range");
        assert_eq!(parse_max_rate("1025M").unwrap_err(), "transfer rate \"1025M\" is out of range");
        assert_eq!(parse_max_rate("5000000M").unwrap_err(), "transfer rate \"5000000M\" exceeds integer range");
        assert_eq!(parse_max_rate("50G").unwrap_err(), "invalid --max-rate unit: \"G\"");
        assert_eq!(parse_max_rate("50 kB").unwrap_err(), "invalid --max-rate unit: \"kB\"");
        assert!(parse_max_rate("1e999").unwrap_err().starts_with("invalid transfer rate"));
    }

    fn cfg(args: &[&str]) -> Result<Config, Error> {
        let a = Args::try_parse_from(std::iter::once("pgbb").chain(args.iter().copied()))
            .map_err(|e| Error::Usage(e.to_string()))?;
        Config::from_args(a)
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256k").unwrap(), 256 << 10);
        assert_eq!(parse_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("x").is_err());
        assert!(parse_size("1T").is_err());
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn compress_values() {
        assert_eq!(parse_compress("zlib:9").unwrap(), Compress::Fixed(Method::Zlib(9)));
        assert_eq!(parse_compress("none").unwrap(), Compress::Fixed(Method::Plain));
        assert!(parse_compress("zlib:12").is_err());
        assert!(parse_compress("lz4").is_err());
        assert_eq!(parse_compress("zstd").unwrap(), Compress::Fixed(Method::Zstd(1)));
        assert_eq!(parse_compress("zstd:19").unwrap(), Compress::Fixed(Method::Zstd(19)));
        assert!(parse_compress("zstd:0").is_err());
        assert!(parse_compress("zstd:20").is_err());
        // As the master tells its children.
        assert_eq!(
            parse_compress(&compress_arg(Compress::Fixed(Method::Zstd(7)))).unwrap(),
            Compress::Fixed(Method::Zstd(7))
        );
    }

    #[test]
    fn validation() {
        assert!(cfg(&["host=/tmp", "/d"]).is_ok());
        assert!(cfg(&["-j", "0", "host=/tmp", "/d"]).is_err());
        assert!(cfg(&["-j", "100000", "host=/tmp", "/d"]).is_err());
        assert!(cfg(&["--chunk-size", "0", "host=/tmp", "/d"]).is_err());
        assert!(cfg(&["--chunk-size", "1G", "host=/tmp", "/d"]).is_err());
        assert!(cfg(&["-D", "-1", "host=/tmp", "/d"]).is_err());
        assert!(cfg(&["-l", "a\nb", "host=/tmp", "/d"]).is_err());
        assert!(cfg(&["--manifest-checksums", "md5", "host=/tmp", "/d"]).is_err());
        assert!(cfg(&["--slave", "host=/tmp", "/d"]).is_err());
        assert!(matches!(cfg(&["--slave", "--stdin", "host=/tmp", "/d"]).unwrap().mode, Mode::Worker { .. }));
        assert!(matches!(cfg(&["-x", "host=/tmp", "/d"]).unwrap().mode, Mode::WalStandalone { .. }));
    }

    #[test]
    fn delta_hash_goes_with_delta_only() {
        let Mode::Master(o) = cfg(&["--delta", "--delta-hash", "host=/tmp", "/d"]).unwrap().mode else { panic!() };
        assert!(o.delta && o.delta_hash);
        let Mode::Master(o) = cfg(&["--delta", "host=/tmp", "/d"]).unwrap().mode else { panic!() };
        assert!(!o.delta_hash);
        let e = cfg(&["--delta-hash", "host=/tmp", "/d"]).err().expect("--delta-hash without --delta");
        assert_eq!(e.exit_code(), crate::error::exit::USAGE, "{e}");
    }

    #[test]
    fn max_lag_is_a_backup_option() {
        let Mode::Master(o) = cfg(&["--max-lag", "16MB", "host=/tmp", "/d"]).unwrap().mode else { panic!() };
        assert_eq!(o.max_lag, Some(crate::lag::MaxLag::Bytes(16 << 20)));
        assert!(matches!(cfg(&["--max-lag", "16", "host=/tmp", "/d"]), Err(Error::Usage(_))));
        assert!(matches!(cfg(&["--max-lag", "1s", "-x", "host=/tmp", "/d"]), Err(Error::Usage(_))));
        assert!(matches!(cfg(&["--max-lag", "1s", "--check", "host=/tmp"]), Err(Error::Usage(_))));
    }

    #[test]
    fn child_argv_round_trips_without_password() {
        let mut c = cfg(&[
            "-v",
            "--no-sync",
            "--manifest-checksums",
            "sha256",
            "host=/tmp port=5999 user=u password=hunter2",
            "/d",
        ])
        .unwrap();
        c.common.verify_lsn = Some(Lsn(0x5000028));
        c.common.trust_lsn = Some(Lsn(0x4000000));
        c.common.run_key = Some(77);
        c.common.zlib_helper = Some(ZlibHelper::Installed("bk".into()));
        c.common.log_format = LogFormat::Json;
        let argv = c.common.worker_args(3, Method::Zlib(5));
        assert!(!argv.iter().any(|a| a.to_string_lossy().contains("hunter2")));
        let strs: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let back = cfg(&strs.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        assert!(matches!(back.mode, Mode::Worker { id: Some(3), compress: Compress::Fixed(Method::Zlib(5)) }));
        assert!(!back.common.sync, "children leave syncing to the master");
        assert_eq!(back.common.algorithm, Algorithm::Sha256);
        assert_eq!(back.common.verify_lsn, Some(Lsn(0x5000028)));
        assert_eq!(back.common.trust_lsn, Some(Lsn(0x4000000)));
        assert_eq!(back.common.session_name("pgbb worker 3"), "pgbb worker 3 [run 77]");
        assert_eq!(back.common.zlib_helper, Some(ZlibHelper::Installed("bk".into())), "the master's helper");
        assert_eq!(back.common.schema, "bk");
        assert_eq!(back.common.log_format, LogFormat::Json, "children write JSON too");
        let w = c.common.wal_args(Lsn(0x5000028), 1, Duration::from_millis(500), Method::Plain);
        let strs: Vec<String> = w.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let back = cfg(&strs.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        assert!(matches!(back.mode, Mode::WalChild { timeline: 1, .. }));
        assert_eq!(back.common.zlib_helper, None, "plain: no helper passed");
    }

    #[test]
    fn the_helper_commands_take_no_backup_arguments() {
        assert!(matches!(cfg(&["--install-helper", "host=/tmp"]).unwrap().mode, Mode::InstallHelper));
        assert!(matches!(cfg(&["--remove-helper", "--schema", "bk", "host=/tmp"]).unwrap().mode, Mode::RemoveHelper));
        for bad in [
            &["--install-helper", "host=/tmp", "/d"][..],
            &["--install-helper", "-j", "4", "host=/tmp"],
            &["--install-helper", "--compress", "zlib", "host=/tmp"],
            &["--remove-helper", "-x", "host=/tmp"],
            &["--install-helper", "--remove-helper", "host=/tmp"],
            &["--install-helper", "--schema", "pg_catalog", "host=/tmp"],
            &["--install-helper", "--schema", "Bad\"x", "host=/tmp"],
            &["--schema", "", "host=/tmp", "/d"],
        ] {
            let e = cfg(bad).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), crate::error::exit::USAGE, "{bad:?}: {e}");
        }
        assert_eq!(cfg(&["host=/tmp", "/d"]).unwrap().common.schema, "pgbb");
    }
}
