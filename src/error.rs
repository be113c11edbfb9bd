//! The top-level error, and the exit codes it maps to: [`EXIT_CODES`] is the one table of
//! them; `--help`, README.md and docs/exit-codes.md are checked against it (tests/it/docs.rs).

use std::io;
use std::path::PathBuf;

use crate::dest::DestError;
use crate::incremental::IncrementalError;
use crate::pg::{PgError, SqlState};
use crate::protocol::ProtocolError;
use crate::signals::Signal;
use crate::transfer::TransferError;

/// Exit codes, by name. Stable: scripts may depend on them. What each means is in
/// [`EXIT_CODES`].
pub mod exit {
    use crate::signals::Signal;

    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const CONNECT: i32 = 3;
    pub const SERVER: i32 = 4;
    pub const DEST: i32 = 5;
    pub const CHECKSUM: i32 = 6;
    /// 128 + the signal's number. A signal ignored when pgbb started (`nohup`) stays
    /// ignored and interrupts nothing.
    pub const SIGHUP: i32 = Signal::Hup.exit_code();
    pub const SIGINT: i32 = Signal::Int.exit_code();
    pub const SIGTERM: i32 = Signal::Term.exit_code();
}

/// One exit code: its number, its name in [`exit`], and what it means, in the words the
/// documentation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode {
    pub code: i32,
    pub name: &'static str,
    pub meaning: &'static str,
}

const fn code(code: i32, name: &'static str, meaning: &'static str) -> ExitCode {
    ExitCode { code, name, meaning }
}

/// Every exit status pgbb uses, and what it means.
pub const EXIT_CODES: &[ExitCode] = &[
    code(exit::OK, "OK", "success"),
    code(exit::FAILED, "FAILED", "backup failed"),
    code(exit::USAGE, "USAGE", "usage"),
    code(exit::CONNECT, "CONNECT", "cannot connect"),
    code(exit::SERVER, "SERVER", "server not suitable"),
    code(exit::DEST, "DEST", "DEST problem"),
    code(exit::CHECKSUM, "CHECKSUM", "backup kept but data pages failed their checksum on the server"),
    code(exit::SIGHUP, "SIGHUP", "interrupted by SIGHUP"),
    code(exit::SIGINT, "SIGINT", "interrupted by SIGINT"),
    code(exit::SIGTERM, "SIGTERM", "interrupted by SIGTERM"),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Dest(#[from] DestError),
    #[error("{role} sent a bad line: {source}")]
    Protocol {
        role: String,
        #[source]
        source: ProtocolError,
    },
    #[error("could not start a child process: {0}")]
    Spawn(#[source] io::Error),
    /// Talking over a pipe failed: a child writing its results to the master or reading its
    /// requests.
    #[error("{what}: {source}")]
    Pipe {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The master closed the WAL child's input before telling it where the backup stopped.
    #[error("the master closed the WAL child's input before the backup stopped")]
    MasterGone,
    /// The process could not set itself up (signal handlers, a thread).
    #[error("cannot {what}: {source}")]
    System {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The server's live data directory, listed on this machine, could not be read.
    #[error("could not list the data directory {}: {source}", root.display())]
    LocalListing {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{role} died unexpectedly ({status}); the backup is incomplete")]
    ChildDied { role: String, status: String },
    #[error("{role} failed: {message}")]
    ChildFailed { role: String, message: String, code: Option<i32> },
    #[error("could not copy \"{path}\": {message}")]
    FileFailed { path: String, message: String },
    #[error("WAL needed to restore the backup is missing from DEST/pg_wal: {missing}; it was probably removed from the server before it could be copied (use a replication slot: give the role REPLICATION, or raise wal_keep_size / max_slot_wal_keep_size)")]
    WalIncomplete { missing: String },
    #[error("the replication slot {0} was invalidated during the backup (max_slot_wal_keep_size): WAL the backup needs may be gone")]
    SlotLost(String),
    #[error("the backup is inconsistent: {0}")]
    Inconsistent(String),
    /// Something pgbb's own logic rules out happened.
    #[error("internal error (a bug in pgbb): {0}")]
    Internal(&'static str),
    #[error("interrupted by {0}; the backup was aborted")]
    Interrupted(Signal),
    /// `-i`: the server cannot take it (exit 4), or OLD_MANIFEST does not fit it (exit 2).
    #[error(transparent)]
    Incremental(IncrementalError),
}

impl From<IncrementalError> for Error {
    fn from(e: IncrementalError) -> Error {
        match e {
            IncrementalError::Pg(p) => Error::Pg(p),
            other => Error::Incremental(other),
        }
    }
}

/// A transfer's failure as the role that ran it reports it.
impl From<TransferError> for Error {
    fn from(e: TransferError) -> Error {
        match e {
            TransferError::Pg(p) | TransferError::GaveUp { source: p, .. } => Error::Pg(p),
            TransferError::Dest(d) => Error::Dest(d),
            TransferError::Data { path, message } => Error::FileFailed { path, message },
        }
    }
}

impl Error {
    /// The exit status (one of [`EXIT_CODES`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Pg(PgError::BadDsn(_) | PgError::BadEnv(_)) => exit::USAGE,
            Error::Pg(PgError::Connect { .. } | PgError::Tls { .. }) => exit::CONNECT,
            Error::Pg(
                PgError::TooOld(_)
                | PgError::WalLevel(_)
                | PgError::Privileges { .. }
                | PgError::Unsupported(_)
                | PgError::Compression(_),
            ) => exit::SERVER,
            Error::Pg(e @ PgError::Query { .. }) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => exit::SERVER,
            Error::Dest(_) => exit::DEST,
            // A child that failed on DEST (no space...) exits with that code.
            Error::ChildFailed { code: Some(exit::DEST), .. } => exit::DEST,
            Error::Interrupted(sig) => sig.exit_code(),
            Error::Incremental(e) if e.is_server() => exit::SERVER,
            Error::Incremental(_) => exit::USAGE,
            _ => exit::FAILED,
        }
    }

    /// What to do about it, when there is something useful to say.
    pub fn hint(&self) -> Option<&'static str> {
        const FREE_SPACE: &str = "free some space or choose another DEST, then run pgbb again";
        match self {
            Error::Pg(PgError::Connect { .. }) => Some("check the connection string, that the server is running and accepts connections (pg_hba.conf), and the password (PGPASSWORD or the DSN)"),
            Error::ChildFailed { code: Some(exit::DEST), .. } => Some(FREE_SPACE),
            Error::ChildDied { .. } | Error::ChildFailed { .. } => {
                Some("nothing was kept; look at the messages above, then run pgbb again")
            }
            Error::Dest(d) if d.is_no_space() => Some(FREE_SPACE),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> io::Error {
        io::Error::from_raw_os_error(libc::EIO)
    }

    /// One error of each kind, and the code it must exit with.
    fn samples() -> Vec<(Error, i32)> {
        let query = |code: &str| PgError::Query {
            what: "w".into(),
            message: "m".into(),
            closed: false,
            code: Some(SqlState::from_code(code)),
        };
        vec![
            (Error::Usage("u".into()), exit::USAGE),
            (Error::Pg(PgError::BadDsn("d".into())), exit::USAGE),
            (Error::Pg(PgError::Connect { target: "t".into(), message: "m".into(), code: None }), exit::CONNECT),
            (Error::Pg(PgError::TooOld("12".into())), exit::SERVER),
            (Error::Pg(query("42501")), exit::SERVER),
            (Error::Pg(query("42P01")), exit::FAILED),
            (Error::Dest(DestError::Io { path: "/d/x".into(), source: io() }), exit::DEST),
            (Error::ChildFailed { role: "worker 1".into(), message: "m".into(), code: Some(exit::DEST) }, exit::DEST),
            (Error::ChildFailed { role: "worker 1".into(), message: "m".into(), code: Some(1) }, exit::FAILED),
            (Error::Spawn(io()), exit::FAILED),
            (Error::Pipe { what: "cannot write results", source: io() }, exit::FAILED),
            (Error::MasterGone, exit::FAILED),
            (Error::System { what: "install signal handlers", source: io() }, exit::FAILED),
            (Error::Internal("x"), exit::FAILED),
            (Error::Inconsistent("x".into()), exit::FAILED),
            (Error::from(IncrementalError::SummarizeOff), exit::SERVER),
            (Error::from(IncrementalError::OtherSystem { old: 1, server: 2 }), exit::USAGE),
            (Error::from(IncrementalError::Pg(PgError::TooOld("x".into()))), exit::SERVER),
            (Error::Interrupted(Signal::Hup), 129),
            (Error::Interrupted(Signal::Int), 130),
            (Error::Interrupted(Signal::Term), 143),
        ]
    }

    #[test]
    fn every_exit_code_is_in_the_table_once() {
        for (e, want) in samples() {
            assert_eq!(e.exit_code(), want, "{e}");
            assert!(EXIT_CODES.iter().any(|c| c.code == want), "{want} ({e}) is not in EXIT_CODES");
        }
        let mut codes: Vec<i32> = EXIT_CODES.iter().map(|c| c.code).collect();
        codes.dedup();
        assert_eq!(codes.len(), EXIT_CODES.len(), "a code twice in EXIT_CODES");
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6, 129, 130, 143]);
    }

    #[test]
    fn io_errors_keep_their_source() {
        use std::error::Error as _;
        let e = Error::Pipe { what: "cannot write results", source: io() };
        assert!(e.source().is_some_and(|s| s.to_string().contains("Input/output error")), "{e}");
        assert!(Error::Spawn(io()).source().is_some());
        assert!(Error::System { what: "start the signal thread", source: io() }.source().is_some());
    }
}
